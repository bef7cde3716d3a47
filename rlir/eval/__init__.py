"""Evaluation of world models: action-following by an inverse dynamics model, and visual quality."""
