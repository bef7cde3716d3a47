"""The shipped pretrained checkpoints, installed as package data (found by rlir.assets)."""
