"""rlir.models: world models and their inference stack (attention backends, static KV cache, sampling)."""
from .ar_world_model import ARWorldModel
from .attention import BACKENDS, attention, available_backends, causal_mask
from .kv_cache import KVCache
from .sampling import filter_logits, generate, sample_tokens

__all__ = [
    "ARWorldModel",
    "BACKENDS",
    "KVCache",
    "attention",
    "available_backends",
    "causal_mask",
    "filter_logits",
    "generate",
    "sample_tokens",
]
