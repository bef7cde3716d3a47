"""What a policy is built from (``make_policy``): how it samples and what its log-prob slots score.

These are the policy's part of a run config (``rlir.grpo.config``): ``SamplingConfig`` is the ``rollout``
section's sampler, ``ObjectiveConfig`` the ``loss`` section's objective. Evaluation and pretraining build them
directly (``SamplingConfig(temperature=0.5)``); every other field keeps its default.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from rlir.schema import ConfigError, Number, Schema

from .flow_matching import check_train_sigmas


class SDEConfig(Schema):
    """The diffusion world model's sampler (models.kind diffusion): Flow-GRPO's SDE on the stochastic steps."""

    num_steps: int = Field(8, ge=1, description="denoising steps per generated frame")
    noise_level: Number = Field(0.7, gt=0.0, description="the SDE's a: sigma_t = a sqrt(sigma / (1 - sigma))")
    stochastic: Literal["all", "window"] = Field(
        "all", description="which steps are SDE steps with log-probs: all (Flow-GRPO) or a window (MixGRPO); the "
        "others are Euler ODE steps")
    window: list[int] = Field([0, 4], description="with stochastic: window, [first step, number of steps]")
    shared_noise: bool = Field(True, description="with loss.objective: flow_matching, one noise level and noise per "
                               "prompt, shared by its G samples (their noise terms cancel in the advantage-weighted "
                               "sum); false: drawn per sample")

    @model_validator(mode="after")
    def _window(self):
        w = self.window
        if self.stochastic == "window" and (len(w) != 2 or not 0 <= w[0] < self.num_steps or w[1] < 1):
            raise ConfigError("window", f"must be [first step, number of steps] with 0 <= first < "
                              f"rollout.sde.num_steps ({self.num_steps}) and number >= 1, got {w!r}")
        return self

    def stochastic_arg(self):
        """The ``stochastic`` argument of rlir.models.flow_sampling.generate."""
        return tuple(self.window) if self.stochastic == "window" else "all"


class SamplingConfig(Schema):
    """How the policy samples: the AR model's token distribution, the DiT's SDE (sde), compiled or eager."""

    temperature: Number = Field(1.0, gt=0.0)
    sde: SDEConfig = Field(default_factory=SDEConfig)
    compile: bool = Field(False, description="run the rollout's per-token (AR) or per-denoising-step (diffusion) "
                          "step under torch.compile(fullgraph=True), as CUDA graphs on CUDA; the first step "
                          "compiles (seconds to a minute), the samples are the same as eager (rlir.models.compiled)")


class ObjectiveConfig(Schema):
    """What a diffusion policy's log-prob slot scores (models.kind diffusion; the AR policy has one objective)."""

    objective: Literal["sde_step", "flow_matching"] = Field(
        "sde_step", description="sde_step: each SDE step's Gaussian transition (Flow-GRPO, rlir.policies.sde_step); "
        "flow_matching: each generated frame's flow-matching target at a noise level drawn from train_sigmas "
        "(advantage-weighted flow matching, rlir.policies.flow_matching)")
    train_sigmas: list[Number] = Field([0.5, 1.0], description="with objective: flow_matching, [low, high] of the "
                                       "uniform noise level each frame's slot is scored at")

    @model_validator(mode="after")
    def _train_sigmas(self):
        check_train_sigmas(self.train_sigmas)
        return self
