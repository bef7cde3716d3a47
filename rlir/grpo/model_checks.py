"""What a GRPO config asks of the models, checked without building them: loading a config runs ``check_models``,
so a bad config fails before any work, with a ConfigError naming the key to change. (The sizes the built models
must share are checked where they are built, rlir.grpo.builders.)"""
from __future__ import annotations

import inspect
from pathlib import Path

from rlir.models.idm import InverseDynamicsModel
from rlir.models.loading import WORLD_MODEL_CLASSES, saved_config
from rlir.models.tokenizer import VQTokenizer
from rlir.policies import Policy, policy_class
from rlir.schema import ConfigError

# Arguments of the random models that the builder derives so that the models agree; giving one is an error.
DERIVED_ARGUMENTS = {"tokenizer": {"image_size"}, "idm": {"head_sizes", "frame_size"},
                     "ar": {"codebook_size", "tokens_per_frame", "action_head_sizes"},
                     "diffusion": {"action_head_sizes", "in_channels", "frame_size"}}


def check_models(cfg, check_paths: bool = True) -> None:
    """What the GRPOConfig ``cfg`` asks of the models, checked without building them: the policy of models.kind
    has the KL loss.kl names; random models take the arguments given; a saved world model (with ``check_paths``)
    is a directory of the class models.kind needs; the clips fit the world model's max_frames."""
    m = cfg.models
    policy = policy_class(m.kind, cfg.loss.objective)
    if cfg.loss.kl == "closed_form":
        check_closed_form_kl(policy)
    if m.source == "random":
        r = m.random
        classes = {"tokenizer": VQTokenizer, "world_model": WORLD_MODEL_CLASSES[m.kind], "idm": InverseDynamicsModel}
        for name, cls in classes.items():
            params = inspect.signature(cls.__init__).parameters
            derived = DERIVED_ARGUMENTS[m.kind if name == "world_model" else name]
            for key in getattr(r, name):
                if key in derived:
                    raise ConfigError(f"models.random.{name}.{key}", "is derived from the other models; remove it")
                if key not in params or key == "self":
                    known = [p for p in params if p != "self" and p not in derived]
                    raise ConfigError(f"models.random.{name}.{key}",
                                      f"unknown {cls.__name__} argument (known: {', '.join(known)})")
        patch = r.tokenizer.get("patch_size", inspect.signature(VQTokenizer).parameters["patch_size"].default)
        if not isinstance(patch, int) or r.image_size % patch:
            raise ConfigError("models.random.image_size", f"{r.image_size} must be a multiple of "
                              f"models.random.tokenizer.patch_size ({patch!r})")
        max_frames = r.world_model.get("max_frames", inspect.signature(classes["world_model"]).parameters[
            "max_frames"].default)
        where = "models.random.world_model.max_frames"
    elif check_paths:
        for name in ("world_model", "tokenizer", "idm", "eval_idm"):
            value = getattr(m, name)
            if value is not None and not (Path(value) / "config.json").is_file():
                raise ConfigError(f"models.{name}", f"{value}: not a saved model directory (no config.json)")
        saved = saved_config(m.world_model, "models.world_model")
        wanted = WORLD_MODEL_CLASSES[m.kind].__name__
        if saved.get("_class_name") != wanted:
            raise ConfigError("models.kind", f"{m.kind} needs a {wanted}, models.world_model {m.world_model} "
                              f"holds a {saved.get('_class_name')}")
        max_frames, where = saved.get("max_frames"), "the world model's max_frames"
    else:
        return
    need = cfg.data.context_frames + cfg.rollout.n_frames
    if isinstance(max_frames, int) and need > max_frames:
        raise ConfigError("rollout.n_frames", f"data.context_frames + rollout.n_frames = {need} exceeds "
                          f"{where} ({max_frames})")


def check_closed_form_kl(policy: type) -> None:
    """loss.kl: closed_form needs the policy class's exact KL to the reference (``Policy.logprobs_and_kl``)."""
    if policy.logprobs_and_kl is Policy.logprobs_and_kl:
        raise ConfigError("loss.kl", f"'closed_form' needs a policy with logprobs_and_kl, which {policy.__name__} "
                          f"does not implement: use k3")
