"""Training of FocalCodec models: data, losses, discriminators, teachers and the multi-stage trainer.

Entry point: ``focalchat train CONFIG`` (see :mod:`codec.training.trainer`). Configs live in
``codec/training/configs/*.json`` (a :class:`codec.training.config.TrainConfig` as JSON).
"""
