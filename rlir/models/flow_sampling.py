"""Sampling frames from a DiTWorldModel: an ODE sampler for evaluation and an SDE sampler for GRPO.

Both generate one frame at a time after the context frames: the frame starts as pure noise at sigma = 1 and
is integrated to sigma = 0 in ``num_steps`` steps over the schedule of diffusers'
``FlowMatchEulerDiscreteScheduler`` (uniform sigmas 1 .. 1/num_steps, warped by ``shift``, then 0).

- "ode": the scheduler's Euler step, x_next = x + (sigma_next - sigma) v.
- "sde": Flow-GRPO's SDE step (``rlir.kernels.flow_sde_step``) on the *stochastic* steps, the plain Euler step
  on the others. ``stochastic`` picks them: "all" (Flow-GRPO), a fraction in (0, 1] of the steps drawn at
  random once per call (DanceGRPO's timestep subsampling), or a window (start, length) of consecutive steps
  (MixGRPO). A stochastic step records, for every sample and generated frame, x_t, x_next, the step's Gaussian
  mean, its std and the log-prob of x_next (unless ``record_transitions`` is False: then only the frames); an
  Euler step records no log-prob.

``transition_logprobs`` scores recorded transitions under the model's current weights (differentiable, for
the GRPO ratio) and returns their means (for a KL to a reference model: with equal stds the KL between two
step Gaussians is ||mean - mean_ref||^2 / (2 std^2)). It runs every (frame, stochastic step) of a video in one
teacher-forced forward: slot (k, i) is frame k's x_t at step i, attending to the generated clean frames < k.

Random draws: the stochastic-step subset (when drawn), then the initial noise of every frame at once, then one
draw per stochastic step. The cached and the uncached path draw the same, so with one generator they give the
same frames, and the SDE sampler at noise_level 0 gives the ODE sampler's frames.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from rlir.kernels import checking_values, flow_sde_step, trusted_inputs
from rlir.kernels.flow_sde_step import SIGMA_MAX

from .compiled import compile_mode, compiled_step, static_buffers, uses_cuda_graphs
from .generators import Generators, check_generators, randn_rows, shared_generator
from .kv_cache import LayerKVCache

SAMPLERS = ("ode", "sde")
Stochastic = Union[str, float, Sequence[int]]


def make_scheduler(num_steps: int, shift: float = 1.0) -> FlowMatchEulerDiscreteScheduler:
    """A FlowMatchEulerDiscreteScheduler set to ``num_steps`` uniform sigmas 1, 1 - 1/K, .., 1/K (shifted), then 0."""
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be an int >= 1, got {num_steps!r}")
    if isinstance(shift, bool) or not isinstance(shift, (int, float)) or not shift > 0:
        raise ValueError(f"shift must be a number > 0, got {shift!r}")
    scheduler = FlowMatchEulerDiscreteScheduler(shift=float(shift))
    # Explicit sigmas: the default schedule ends at 1/1000, which wastes the last step on sigma 0.001 -> 0.
    scheduler.set_timesteps(sigmas=[1 - i / num_steps for i in range(num_steps)])
    return scheduler


def flow_sigmas(num_steps: int, shift: float = 1.0) -> torch.Tensor:
    """The sampling schedule: fp32 [num_steps + 1] from 1 down to 0."""
    return make_scheduler(num_steps, shift).sigmas.float().clone()


@functools.lru_cache(maxsize=64, typed=True)  # typed: shift=True must not hit shift=1's entry
def _device_sigmas(num_steps: int, shift: float, device: torch.device) -> torch.Tensor:
    """flow_sigmas on ``device``, made once per (schedule, device): building a scheduler reads its sigmas back
    and copying them to a GPU syncs, neither of which a rollout should pay every step. Read-only."""
    return flow_sigmas(num_steps, shift).to(device)


def stochastic_steps(num_steps: int, stochastic: Stochastic = "all",
                     generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Indices (int64, ascending) of the SDE steps among ``num_steps``: "all", a fraction in (0, 1] of them drawn
    from ``generator`` (at least one), or a window (start, length) clipped to the schedule."""
    if stochastic == "all":
        return torch.arange(num_steps)
    if isinstance(stochastic, float) and not isinstance(stochastic, bool):
        if not 0 < stochastic <= 1:
            raise ValueError(f"stochastic fraction must be in (0, 1], got {stochastic!r}")
        count = max(1, round(stochastic * num_steps))
        return torch.randperm(num_steps, generator=generator)[:count].sort().values
    if isinstance(stochastic, (tuple, list)) and len(stochastic) == 2 \
            and all(isinstance(v, int) and not isinstance(v, bool) for v in stochastic):
        start, length = stochastic
        if not 0 <= start < num_steps or length < 1:
            raise ValueError(f"stochastic window (start, length) needs 0 <= start < num_steps={num_steps} and "
                             f"length >= 1, got {tuple(stochastic)!r}")
        return torch.arange(start, min(start + length, num_steps))
    raise ValueError(f"stochastic must be 'all', a fraction in (0, 1] or a window (start, length), got {stochastic!r}")


def _stochastic_step_list(num_steps: int, stochastic: Stochastic, generator) -> list:
    """``stochastic_steps`` as host ints: "all" and windows without touching a tensor; a drawn fraction reads
    its CPU permutation once."""
    if stochastic == "all":
        return list(range(num_steps))
    if isinstance(stochastic, (tuple, list)):
        steps = stochastic_steps(num_steps, stochastic)  # validates
        return list(range(stochastic[0], stochastic[0] + len(steps)))
    return stochastic_steps(num_steps, stochastic, generator).tolist()


@dataclass
class FlowSample:
    """Generated videos and, for the SDE sampler, the recorded stochastic transitions. N = B * G rows (row
    b * G + g is sample g of prompt b), n generated frames, K steps, Ks of them stochastic.

    frames: [N, n, C, S, S] the generated frames (model space; ``model.decode_frames`` makes uint8 of them).
    context [N, n_ctx, C, S, S], actions [N, n, H], context_actions [N, n_ctx - 1, H]: the prompt, per row.
    sigmas: [K + 1] the schedule. steps: [Ks] the stochastic step indices (SDE only). With the transitions
    recorded (SDE only): trajectory [N, n, K + 1, C, S, S], x at every sigma; means [N, n, Ks, C, S, S], stds
    [N, n, Ks] and log_probs [N, n, Ks] fp32 of their transitions trajectory[:, :, i] -> trajectory[:, :, i + 1].
    """

    frames: torch.Tensor
    context: torch.Tensor
    actions: torch.Tensor
    context_actions: torch.Tensor
    sigmas: torch.Tensor
    sampler: str
    noise_level: float = 0.0
    sigma_max: float = SIGMA_MAX
    trajectory: Optional[torch.Tensor] = None
    steps: Optional[torch.Tensor] = None
    means: Optional[torch.Tensor] = None
    stds: Optional[torch.Tensor] = None
    log_probs: Optional[torch.Tensor] = None

    @property
    def x_t(self) -> torch.Tensor:
        """[N, n, Ks, C, S, S] the state before each stochastic step."""
        return self.trajectory[:, :, self.steps]

    @property
    def x_next(self) -> torch.Tensor:
        """[N, n, Ks, C, S, S] the state after each stochastic step."""
        return self.trajectory[:, :, self.steps + 1]


def _check_prompt(model, context, actions, context_actions, num_samples):
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be an int >= 1, got {num_samples!r}")
    cfg = model.config
    frame = (cfg.in_channels, *model.frame_shape)
    if not isinstance(context, torch.Tensor) or context.ndim != 5 or tuple(context.shape[2:]) != frame \
            or not context.is_floating_point():
        raise ValueError(f"context must be float model-space frames [B, n_ctx, {', '.join(map(str, frame))}], got "
                         f"{getattr(context, 'dtype', type(context).__name__)} {tuple(getattr(context, 'shape', ()))}")
    b, n_ctx = context.shape[:2]
    with trusted_inputs():  # types and shapes here; the values below, with one host read
        model.check_actions(actions)
        if context_actions is not None:
            model.check_actions(context_actions, "context_actions")
    if actions.shape[0] != b or actions.shape[1] < 1:
        raise ValueError(f"actions must have shape [B={b}, n_steps >= 1, H], got {tuple(actions.shape)}")
    if context_actions is None:
        if n_ctx > 1:
            raise ValueError(f"context_actions [B, n_ctx - 1, H] is required with n_ctx={n_ctx} context frames")
        context_actions = actions[:, :0]
    elif tuple(context_actions.shape[:2]) != (b, n_ctx - 1):
        raise ValueError(f"context_actions must have shape [B, n_ctx - 1, H] = "
                         f"{(b, n_ctx - 1, model.num_action_heads)}, got {tuple(context_actions.shape)}")
    if n_ctx + actions.shape[1] > cfg.max_frames:
        raise ValueError(f"n_ctx + n_steps = {n_ctx + actions.shape[1]} frames exceeds max_frames={cfg.max_frames}")
    if checking_values():
        model.check_actions(torch.cat((context_actions, actions), dim=1), "actions and context_actions")
    return context_actions


class _CachedHistory:
    """The clean frames so far, as a KV cache: the velocity of the next frame, then ``append`` it. The B prompts'
    context is run once and its cache replicated for their G samples. With a compile ``mode`` the velocity is
    ``model.static_velocity`` compiled (rlir.models.compiled), over cache buffers at fixed addresses."""

    def __init__(self, model, context, all_actions, num_samples, mode=None):
        self.model, self.dtype = model, model.patch_in.weight.dtype
        frame_actions = model.frame_actions(all_actions)  # [B, n_ctx + n, H]: the action that led to each frame
        n_ctx = context.shape[1]
        self.cache = model.new_cache(context.shape[0], frame_actions.shape[1])
        model.cache_frames(context.to(self.dtype), frame_actions[:, :n_ctx], self.cache)
        self.cache = self.cache.repeat_interleave(num_samples)
        self.frame_actions = frame_actions.repeat_interleave(num_samples, 0)
        self.last = context[:, -1].repeat_interleave(num_samples, 0).to(self.dtype)
        self.next_index = n_ctx
        self.step = None
        if mode is not None:
            self.step = compiled_step(model, _static_velocity, mode, context.device)
            layers = len(self.cache.k)
            buffers = static_buffers(model, "denoise", *self.cache.k.unbind(0), *self.cache.v.unbind(0))
            # the eager appends (cache_frames) write into the per-layer buffers the compiled step reads
            self.cache = LayerKVCache(buffers[:layers], buffers[layers:], self.cache.length)
            self.frame_indices = torch.arange(frame_actions.shape[1], device=context.device)  # 0-d views: no copies
            self.cuda_graphs = uses_cuda_graphs(mode, context.device)

    def velocity(self, x, sigma):
        if self.step is None:
            return self.model.cached_velocity(x.to(self.dtype), sigma.expand(len(x)),
                                              self.frame_actions[:, self.next_index], self.cache, self.last)
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        return self.step(self.model, x.to(self.dtype), sigma, self.frame_actions[:, self.next_index],
                         self.cache.k, self.cache.v, self.last, self.frame_indices[self.next_index])

    def append(self, x):
        x = x.to(self.dtype)
        self.model.cache_frames(x[:, None], self.frame_actions[:, self.next_index, None], self.cache, before=self.last)
        self.last, self.next_index = x, self.next_index + 1


def _static_velocity(model, x, sigma, frame_action, cache_k, cache_v, previous, frame_index):
    # sigma: 0-d, expanded inside the graph (a CUDA graph copies each input into a placeholder of its strides,
    # and a stride-0 placeholder cannot be written)
    return model.static_velocity(x, sigma.expand(x.shape[0]), frame_action, cache_k, cache_v, previous, frame_index)


class _RecomputedHistory:
    """The same as _CachedHistory with no cache: every velocity runs the whole clean history again."""

    def __init__(self, model, context, all_actions, num_samples):
        self.model, self.dtype = model, model.patch_in.weight.dtype
        self.frames = [context.repeat_interleave(num_samples, 0).to(self.dtype)]
        self.actions = all_actions.repeat_interleave(num_samples, 0)
        self.next_index = context.shape[1]

    def velocity(self, x, sigma):
        v = self.model(x[:, None].to(self.dtype), sigma.expand(len(x), 1), self.actions,
                       clean=torch.cat(self.frames, dim=1), frame_index=[self.next_index])
        return v[:, 0]

    def append(self, x):
        self.frames.append(x[:, None].to(self.dtype))
        self.next_index += 1


@torch.no_grad()
def generate(model, context: torch.Tensor, actions: torch.Tensor, *, context_actions: Optional[torch.Tensor] = None,
             num_samples: int = 1, num_steps: int = 8, shift: float = 1.0, sampler: str = "ode",
             noise_level: float = 0.7, stochastic: Stochastic = "all", sigma_max: float = SIGMA_MAX,
             generator: Generators = None, use_cache: bool = True, compile=False,
             record_transitions: bool = True) -> FlowSample:
    """Roll out ``num_samples`` (G) continuations of each of B prompts under commanded actions.

    context: model-space frames [B, n_ctx, C, S, S] (``model.encode_frames``); actions [B, n, H], actions[:, k]
    leads to generated frame k; context_actions [B, n_ctx - 1, H] (required when n_ctx > 1). See the module
    doc for sampler, noise_level, stochastic; sigma_max is ``flow_sde_step``'s clamp. With ``use_cache`` the
    B prompts are run once and their KV cache replicated G times; ``use_cache=False`` recomputes the whole
    history at every step (the reference the cached path is tested against). ``compile``: False runs each
    denoising step eagerly; True runs ``model.static_velocity`` (the per-frame denoising step over the static
    KV cache) under torch.compile(fullgraph=True), as CUDA graphs on CUDA; a string names the mode (see
    rlir.models.compiled). Needs ``use_cache``. ``generator``: a torch.Generator, or a ``GroupGenerators`` (one
    generator per prompt for its rows' noise, the shared one for the stochastic-step subset).
    ``record_transitions``: False keeps only the frames of an SDE sample (the same frames, from the same draws),
    not its trajectory and step log-probs, for a caller that scores something else.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {list(SAMPLERS)}, got {sampler!r}")
    mode = compile_mode(compile, context.device if isinstance(context, torch.Tensor) else None)
    if mode is not None and not use_cache:
        raise ValueError("compile=True needs use_cache=True (it compiles the static KV-cache denoising step)")
    # The one host read of the inputs' values (none inside trusted_inputs()); the loop runs trusted.
    context_actions = _check_prompt(model, context, actions, context_actions, num_samples)
    check_generators(generator, context.shape[0])
    sde = sampler == "sde"
    steps = _stochastic_step_list(num_steps, stochastic, shared_generator(generator)) if sde else []
    with trusted_inputs():
        return _generate(model, context, actions, context_actions, num_samples, num_steps, shift, sampler,
                         noise_level, steps, sigma_max, generator, use_cache, mode, record_transitions)


def _generate(model, context, actions, context_actions, num_samples, num_steps, shift, sampler, noise_level,
              steps, sigma_max, generator, use_cache, mode=None, record_transitions=True) -> FlowSample:
    sigmas = _device_sigmas(num_steps, shift, context.device)
    sde = sampler == "sde"
    g, n = num_samples, actions.shape[1]
    rows, frame = context.shape[0] * g, context.shape[2:]
    all_actions = torch.cat((context_actions, actions), dim=1)
    history = (_CachedHistory(model, context, all_actions, g, mode) if use_cache
               else _RecomputedHistory(model, context, all_actions, g))
    sample = FlowSample(context.new_empty(rows, n, *frame), context.repeat_interleave(g, 0),
                        actions.repeat_interleave(g, 0), context_actions.repeat_interleave(g, 0), sigmas, sampler)
    if sde:
        ks = len(steps)
        sample.noise_level, sample.sigma_max = noise_level, sigma_max
        sample.steps = torch.tensor(steps, dtype=torch.long).to(context.device, non_blocking=True)
        if record_transitions:
            sample.trajectory = context.new_empty(rows, n, num_steps + 1, *frame)
            sample.means = context.new_empty(rows, n, ks, *frame)
            sample.stds = context.new_empty(rows, n, ks)
            sample.log_probs = context.new_empty(rows, n, ks)

    initial_noise = randn_rows((rows, n, *frame), generator, context.device)
    for k in range(n):
        if sde:
            x = _sde_frame(history, initial_noise[:, k], sample, k, steps, generator)
        else:
            x = _ode_frame(history, initial_noise[:, k], num_steps, shift)
        sample.frames[:, k] = x
        if k < n - 1:
            history.append(x)
    return sample


def _ode_frame(history, x: torch.Tensor, num_steps: int, shift: float) -> torch.Tensor:
    """Integrate one frame from noise x to sigma 0 with the scheduler's Euler steps."""
    scheduler = make_scheduler(num_steps, shift)  # a scheduler counts its steps: a fresh one per frame
    for i, timestep in enumerate(scheduler.timesteps):
        v = history.velocity(x, scheduler.sigmas[i].to(x.device)).float()
        x = scheduler.step(v, timestep, x).prev_sample
    return x


def _sde_frame(history, x: torch.Tensor, sample: FlowSample, k: int, steps: list, generator) -> torch.Tensor:
    """Integrate frame k from noise x: SDE steps at ``steps`` (host ints, = sample.steps), recorded into sample
    when it has a trajectory; Euler steps elsewhere. No host syncs: the sigmas stay on the device (flow_sde_step
    takes 0-d tensors)."""
    sigmas = sample.sigmas
    slots = {step: slot for slot, step in enumerate(steps)}
    record = sample.trajectory is not None
    if record:
        sample.trajectory[:, k, 0] = x
    for i in range(len(sigmas) - 1):
        v = history.velocity(x, sigmas[i]).float()
        if i in slots:
            noise = randn_rows(x.shape, generator, x.device)
            out = flow_sde_step(x, v, sigmas[i], sigmas[i + 1], sample.noise_level, noise=noise,
                                sigma_max=sample.sigma_max)
            if record:
                slot = slots[i]
                sample.means[:, k, slot], sample.stds[:, k, slot], sample.log_probs[:, k, slot] = \
                    out.mean, out.std, out.log_prob
            x = out.x_next
        else:
            x = x + (sigmas[i + 1] - sigmas[i]) * v
        if record:
            sample.trajectory[:, k, i + 1] = x
    return x


@dataclass
class TransitionScores:
    """Scores of recorded SDE transitions under some weights: log_probs [N, n, Ks] fp32 (differentiable),
    means [N, n, Ks, C, S, S] (the step Gaussians' means) and stds [N, n, Ks]."""

    log_probs: torch.Tensor
    means: torch.Tensor
    stds: torch.Tensor


def teacher_forced_history(sample: FlowSample, rows, dtype) -> tuple:
    """(clean [R, n_ctx + n - 1, C, S, S] in ``dtype``, actions [R, n_ctx - 1 + n, H]) of ``sample``'s rows: the
    real context and every generated frame but the last, which a teacher-forced forward over all n generated
    frames attends to, and the actions that lead through them."""
    clean = torch.cat((sample.context[rows], sample.frames[rows][:, :-1]), dim=1).to(dtype)
    return clean, torch.cat((sample.context_actions[rows], sample.actions[rows]), dim=1)


def transition_logprobs(model, sample: FlowSample, index: Optional[torch.Tensor] = None) -> TransitionScores:
    """Log-probs of the recorded stochastic transitions of ``sample`` (rows ``index``, default all) under the
    model's current weights, in one teacher-forced forward per call; differentiable w.r.t. the weights. With
    the weights that generated ``sample`` they equal ``sample.log_probs`` (up to float rounding)."""
    if sample.sampler != "sde" or sample.trajectory is None or len(sample.steps) == 0:
        raise ValueError("sample holds no stochastic transitions: generate it with sampler='sde' (and "
                         "record_transitions)")
    rows = slice(None) if index is None else index
    trajectory = sample.trajectory[rows]
    n_rows, n = trajectory.shape[:2]
    steps = sample.steps
    ks = len(steps)
    dtype = model.patch_in.weight.dtype
    clean, all_actions = teacher_forced_history(sample, rows, dtype)
    n_ctx = sample.context.shape[1]
    frame = trajectory.shape[3:]
    x_t = trajectory[:, :, steps].reshape(n_rows, n * ks, *frame)
    x_next = trajectory[:, :, steps + 1].reshape(n_rows * n * ks, *frame)
    sigma = sample.sigmas[steps].repeat(n)  # slot (k, i) -> sigma of step i
    sigma_next = sample.sigmas[steps + 1].repeat(n)
    frame_index = [n_ctx + k for k in range(n) for _ in range(ks)]  # host ints: no device sync
    v = model(x_t.to(dtype), sigma.expand(n_rows, -1), all_actions, clean=clean, frame_index=frame_index)
    out = flow_sde_step(x_t.reshape(n_rows * n * ks, *frame), v.float().reshape(n_rows * n * ks, *frame),
                        sigma.repeat(n_rows), sigma_next.repeat(n_rows), sample.noise_level, x_next=x_next,
                        sigma_max=sample.sigma_max)
    return TransitionScores(out.log_prob.view(n_rows, n, ks), out.mean.view(n_rows, n, ks, *frame),
                            out.std.view(n_rows, n, ks))
