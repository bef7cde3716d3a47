"""rlir.integrations: run rlir's kernels inside other libraries' trainers.

Each integration is its own submodule and imports its host library lazily, so ``import rlir.integrations``
never needs any of them installed:

    rlir.integrations.trl    TRL's GRPOTrainer on rlir's token_logprobs / grpo_loss (``pip install rlir[trl]``)
    rlir.integrations.verl   verl's actor on rlir's token_logprobs / grpo_loss (the ``rlir_grpo`` policy loss)
"""

__all__ = ["trl", "verl"]
