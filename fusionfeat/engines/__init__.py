"""Engines: the work that runs encoders over images. ``extract`` (images → store), ``finetune`` (per-fold
fine-tuning → store), ``train_loop`` (one backbone + head on one fold), ``image_bank`` (every image decoded
once for fine-tuning) and ``distributed`` (torchrun's process group and rank context).

Import from the modules (``from fusionfeat.engines.extract import extract``); the package itself imports
nothing, so the CLI starts without loading the engines it does not run.
"""
