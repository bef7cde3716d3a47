"""Supervised pretraining of the models RLIR starts from; one module per `rlir pretrain` target."""
