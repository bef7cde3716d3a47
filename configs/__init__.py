"""The shipped run configs, installed as package data (found by rlir.assets)."""
