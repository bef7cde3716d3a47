"""Evaluation of world models: held-out videos (``generation``, the one path of training's in-run evaluation and of
``rlir eval``), action-following by an inverse dynamics model, visual quality, the Crafter verifier, reports."""
