"""rlir: post-train action-conditioned video world models with RL from inverse-dynamics rewards (RLIR)."""
__version__ = "0.1.0"
