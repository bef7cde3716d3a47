"""`rlir pretrain idm|tokenizer|world-model`: supervised pretraining of the models RLIR starts from.

Each target lives in rlir/pretrain/<module>.py and exposes ``add_arguments(parser)`` and ``run(args)``;
this file only maps target names to those modules.
"""
from __future__ import annotations

import importlib

TARGETS = {
    "idm": ("rlir.pretrain.idm", "the inverse dynamics model (the reward IDM, or the held-out evaluation IDM with --eval)"),
    "tokenizer": ("rlir.pretrain.tokenizer", "the VQ frame tokenizer (64x64 frames -> 8x8 codes)"),
    "world-model": ("rlir.pretrain.world_model", "a world model: autoregressive over tokenizer codes (--kind ar) or the "
                    "flow-matching DiT (--kind diffusion)"),
}


def register(subparsers) -> None:
    parser = subparsers.add_parser("pretrain", help="pretrain the IDM, the frame tokenizer or a world model")
    sub = parser.add_subparsers(dest="target", metavar="TARGET", required=True)
    for name, (module, help_text) in TARGETS.items():
        target = sub.add_parser(name, help=help_text)
        importlib.import_module(module).add_arguments(target)
        target.set_defaults(func=lambda args, module=module: importlib.import_module(module).run(args))
