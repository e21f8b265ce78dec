"""Our model directories on disk: params directories, and a training workdir's newest good params.

    params directory:  DIR/config.json + DIR/params/ + DIR/checksums.json  (convert --from-hf)
    training workdir:  DIR/config.json + DIR/checkpoints/<step>/...        (train_checkpoints.py)

A params directory's checksums.json holds integrity.py's checksum of every array, checked when it is
loaded: orbax would give back a flipped bit as a wrong weight. (Directories written before it have none.)
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import jax
import orbax.checkpoint as ocp

from gpt2_jax import checkpoint_failures, integrity, outdir
from gpt2_jax.config import GPT2Config
from gpt2_jax.convert import first_misfit
from gpt2_jax.model_dirs import CHECKPOINTS, PARAMS, is_flax_dir, is_params_dir
from gpt2_jax.checkpoint_failures import CheckpointError
from gpt2_jax.train_checkpoints import TrainCheckpoints

CHECKSUMS = "checksums.json"
PARAMS_DIR_KIND = "params directory (config.json + params/)"


def save_params(out_dir: str | Path, config: GPT2Config, params, overwrite: bool = False) -> None:
    """Write DIR/config.json and DIR/params (an orbax checkpoint of the param tree), replacing DIR whole."""
    def write(directory: Path) -> None:
        config.to_json(directory / "config.json")
        checkpoint_failures.quiet_orbax_failures()  # a failed write: outdir's one line, not orbax's hundreds
        try:
            handler = ocp.StandardCheckpointHandler(save_concurrent_gb=_in_flight_gb(params))
            with ocp.Checkpointer(handler) as checkpointer:
                checkpointer.save(directory / PARAMS, params)
        except Exception as error:  # orbax/tensorstore raise many types for a failed write (a full disk)
            raise OSError(checkpoint_failures.failure_reason(error)) from None
        (directory / CHECKSUMS).write_text(json.dumps(integrity.checksums(params), indent=0))

    outdir.write_dir(out_dir, write, is_params_dir, PARAMS_DIR_KIND, overwrite)


def _in_flight_gb(params) -> int:
    """orbax's bound on the bytes it copies out at once while saving (96 GB by default: all of GPT-2's params, a
    second copy; `convert --from-hf` of gpt2-large added 1.98x the weights, 1.53x with this): 1 GB, or
    more than the largest array's size, which it must take whole (and refuses at exactly the bound)."""
    return max(1, max(leaf.nbytes for leaf in jax.tree.leaves(params)) // 10**9 + 1)


def load_params(path: str | Path) -> tuple[GPT2Config, dict]:
    """(config, params) from a params directory or a training workdir's latest good checkpoint.

    Params land on the default device; a padded vocabulary stays padded (see model.py).
    """
    path = Path(path).absolute()
    if not is_flax_dir(path):
        raise CheckpointError(f"{path}: neither a params directory nor a training workdir "
                              f"(no config.json + {PARAMS}/ or {CHECKPOINTS}/)")
    config = GPT2Config.from_json(path / "config.json")
    checkpoint_failures.quiet_orbax_failures()
    if (path / PARAMS).is_dir():
        return config, _fitting(path, config, _checked(path, _read_params(path / PARAMS)))
    checkpoints = TrainCheckpoints(path, read_only=True)
    try:
        restored = checkpoints.restore_latest(lambda metadata: {PARAMS: _single_device(metadata[PARAMS])})
    finally:
        checkpoints.close()
    return config, _fitting(path, config, restored[1][PARAMS])


def _fitting(path: Path, config: GPT2Config, params):
    """`params`, if they have the shapes `config` (its config.json) gives: an edited config.json was a flax
    traceback, or (fewer layers) a model that silently skipped some."""
    misfit = first_misfit(config, params)
    if misfit:
        raise CheckpointError(f"{path}: its params do not fit its config.json ({misfit[0]}: "
                              f"{misfit[1] or 'none'} saved, config.json gives {misfit[2] or 'none'})")
    return params


WRITE_AGAIN = "write it again (python -m gpt2_jax.convert --from-hf ... --overwrite)"


def _read_params(params_dir: Path):
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)  # orbax's WARNING of damaged metadata: a line before the one printed here
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            return checkpointer.restore(params_dir, _single_device(checkpointer.metadata(params_dir)))
    except Exception as error:  # orbax/tensorstore raise many types for damaged files
        advice = WRITE_AGAIN if checkpoint_failures.is_damage(error) else "rerun once it can be read"  # the machine's
        raise CheckpointError(f"{params_dir}: unreadable ({checkpoint_failures.failure_reason(error)}); {advice}") \
            from None
    finally:
        absl_logger.setLevel(level)


def _checked(path: Path, params):
    """`params` read from the params directory `path`, if they match its checksums.json (where it has one)."""
    if not (path / CHECKSUMS).exists():
        return params
    try:
        saved = json.loads((path / CHECKSUMS).read_text())
        if not isinstance(saved, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{path / CHECKSUMS}: unreadable ({error})") from None
    damaged = integrity.first_corrupt_leaf(params, saved)
    if damaged:
        raise CheckpointError(f"{path / PARAMS}: corrupt ({damaged} differs from its checksum); {WRITE_AGAIN}")
    return params


def _single_device(metadata_tree):
    """An abstract target that restores every array onto the default device, whatever it was saved from."""
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    metadata_tree = getattr(metadata_tree, "item_metadata", metadata_tree)  # StepMetadata -> TreeMetadata
    tree = getattr(metadata_tree, "tree", metadata_tree)
    return jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), tree)
