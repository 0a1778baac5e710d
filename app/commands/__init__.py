"""Subcommands of ``focalchat``; each module has ``register(subparsers)`` that adds its parsers."""

from app.commands import bench, call, codec_files, conformance, demo, evaluate, gui, models, recordings, train

REGISTRY = [demo.register, codec_files.register, conformance.register, models.register, recordings.register, bench.register,
            call.register, evaluate.register, train.register, gui.register]
