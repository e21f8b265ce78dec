"""Our two kinds of model directory, told apart by their file names alone:

    params directory:  DIR/config.json + DIR/params/              (checkpoint.py)
    training workdir:  DIR/config.json + DIR/checkpoints/<step>/  (train_checkpoints.py)

Apart from checkpoint.py so that telling them from an HF directory imports no orbax, grain or
tensorstore: 0.2 s of imports that sampling or evaluating an HF model never uses.
"""

from __future__ import annotations

from pathlib import Path

PARAMS, CHECKPOINTS = "params", "checkpoints"
# what else a training workdir holds: workdir_lock.py's lock, workdir.py's settings, metrics.py's rows, its curves
TRAIN_LOCK, TRAIN_CONFIG, METRICS, LOSS_PLOT = "train.lock", "train_config.json", "metrics.jsonl", "loss.png"


def is_flax_dir(path: Path) -> bool:
    """A params directory or a training workdir (not an HF directory)."""
    return (path / "config.json").is_file() and ((path / PARAMS).is_dir() or (path / CHECKPOINTS).is_dir())


def is_params_dir(path: Path) -> bool:
    return is_flax_dir(path) and not (path / CHECKPOINTS).exists()


def is_workdir_without_checkpoint(path: Path) -> bool:
    """A training workdir with no checkpoint saved in it (none yet, or checkpoints/ removed): no model to load."""
    return path.is_dir() and any((path / name).exists() for name in (TRAIN_LOCK, TRAIN_CONFIG)) and not any(
        (path / CHECKPOINTS).glob("[0-9]*"))
