"""rlir.kernels: the GRPO math of RLIR as PyTorch references (the spec) and fused Triton kernels.

Every op dispatches to Triton for CUDA tensors and to its PyTorch reference otherwise;
``RLIR_KERNELS=torch|triton`` forces one path (see kernels/_common.py).
"""
from .group_advantage import group_advantage, group_advantage_reference
from .idm_reward import IDMReward, idm_advantage, idm_reward, idm_reward_reference
from .token_logprobs import token_logprobs, token_logprobs_reference
from .grpo_loss import aggregate_tokens, grpo_loss, grpo_loss_from_logits, grpo_loss_reference, loss_normaliser
from .fused_linear_logprobs import fused_linear_grpo_loss, fused_linear_logprobs, fused_linear_logprobs_reference
from .flow_sde_step import FlowSDEStep, flow_sde_step, flow_sde_step_reference
from ._common import checking_values, trusted_inputs

__all__ = [
    "group_advantage",
    "group_advantage_reference",
    "IDMReward",
    "idm_reward",
    "idm_reward_reference",
    "idm_advantage",
    "token_logprobs",
    "token_logprobs_reference",
    "grpo_loss",
    "grpo_loss_reference",
    "grpo_loss_from_logits",
    "loss_normaliser",
    "aggregate_tokens",
    "fused_linear_logprobs",
    "fused_linear_logprobs_reference",
    "fused_linear_grpo_loss",
    "flow_sde_step",
    "flow_sde_step_reference",
    "FlowSDEStep",
    "trusted_inputs",
    "checking_values",
]
