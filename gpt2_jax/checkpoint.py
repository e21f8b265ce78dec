"""Our model directories on disk: params directories, and a training workdir's newest good params.

    params directory:  DIR/config.json + DIR/params/                  (convert --from-hf)
    training workdir:  DIR/config.json + DIR/checkpoints/<step>/...   (train_checkpoints.py)
"""

from __future__ import annotations

from pathlib import Path

import jax
import orbax.checkpoint as ocp

from gpt2_jax import integrity, outdir
from gpt2_jax.config import GPT2Config
from gpt2_jax.train_checkpoints import CHECKPOINTS, CheckpointError, TrainCheckpoints

PARAMS = "params"
PARAMS_DIR = "params directory (config.json + params/)"


def save_params(out_dir: str | Path, config: GPT2Config, params, overwrite: bool = False) -> None:
    """Write DIR/config.json and DIR/params (an orbax checkpoint of the param tree), replacing DIR whole."""
    def write(directory: Path) -> None:
        config.to_json(directory / "config.json")
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(directory / PARAMS, params)

    outdir.write_dir(out_dir, write, is_params_dir, PARAMS_DIR, overwrite)


def is_flax_dir(path: Path) -> bool:
    return (path / "config.json").is_file() and ((path / PARAMS).is_dir() or (path / CHECKPOINTS).is_dir())


def is_params_dir(path: Path) -> bool:
    return is_flax_dir(path) and not (path / CHECKPOINTS).exists()


def load_params(path: str | Path) -> tuple[GPT2Config, dict]:
    """(config, params) from a params directory or a training workdir's latest good checkpoint.

    Params land on the default device; a padded vocabulary stays padded (see model.py).
    """
    path = Path(path).absolute()
    if not is_flax_dir(path):
        raise CheckpointError(f"{path}: neither a params directory nor a training workdir "
                              f"(no config.json + {PARAMS}/ or {CHECKPOINTS}/)")
    config = GPT2Config.from_json(path / "config.json")
    integrity.quiet_orbax_failures()
    if (path / PARAMS).is_dir():
        try:
            with ocp.StandardCheckpointer() as checkpointer:
                return config, checkpointer.restore(path / PARAMS, _single_device(checkpointer.metadata(path / PARAMS)))
        except Exception as error:  # orbax/tensorstore raise many types for damaged files
            raise CheckpointError(f"{path / PARAMS}: unreadable ({type(error).__name__})") from None
    checkpoints = TrainCheckpoints(path, read_only=True)
    try:
        restored = checkpoints.restore_latest(lambda metadata: {PARAMS: _single_device(metadata[PARAMS])})
    finally:
        checkpoints.close()
    return config, restored[1][PARAMS]


def _single_device(metadata_tree):
    """An abstract target that restores every array onto the default device, whatever it was saved from."""
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    metadata_tree = getattr(metadata_tree, "item_metadata", metadata_tree)  # StepMetadata -> TreeMetadata
    tree = getattr(metadata_tree, "tree", metadata_tree)
    return jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), tree)
