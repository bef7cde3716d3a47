"""rlir.models: world models and their inference stack (attention backends, static KV cache, sampling)."""
from .ar_world_model import ARWorldModel
from .attention import BACKENDS, attention, available_backends, causal_mask
from .dit_world_model import DiTWorldModel
from .flow_sampling import FlowSample, TransitionScores, flow_sigmas, stochastic_steps, transition_logprobs
from .kv_cache import KVCache
from .sampling import filter_logits, generate, sample_tokens

__all__ = [
    "ARWorldModel",
    "BACKENDS",
    "DiTWorldModel",
    "FlowSample",
    "KVCache",
    "TransitionScores",
    "attention",
    "available_backends",
    "causal_mask",
    "filter_logits",
    "flow_sigmas",
    "generate",
    "sample_tokens",
    "stochastic_steps",
    "transition_logprobs",
]
