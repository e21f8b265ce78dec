"""Orbax checkpoints: a training run's state and data position, and bare params for inference.

Layouts (each directory is self-describing through its HF-schema `config.json`):
    params directory:  DIR/config.json + DIR/params/                      (convert --from-hf)
    training workdir:  DIR/config.json + DIR/checkpoints/<step>/{params,opt_state,data}/

Orbax writes each step to a temporary directory and renames it when complete, so a killed
run never leaves a half-written checkpoint behind as the latest one.
"""

from __future__ import annotations

import sys
from pathlib import Path

import grain
import jax
import orbax.checkpoint as ocp

from gpt2_jax.config import GPT2Config
from gpt2_jax.errors import UserError

CHECKPOINTS = "checkpoints"
PARAMS = "params"


class CheckpointError(UserError):
    """A checkpoint that is missing or that none of the saved steps can restore."""


def save_params(out_dir: str | Path, config: GPT2Config, params) -> None:
    """Write DIR/config.json and DIR/params (an orbax checkpoint of the param tree)."""
    out_dir = Path(out_dir).absolute()
    out_dir.mkdir(parents=True, exist_ok=True)
    config.to_json(out_dir / "config.json")
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(out_dir / PARAMS, params, force=True)


def is_flax_dir(path: Path) -> bool:
    return (path / "config.json").is_file() and ((path / PARAMS).is_dir() or (path / CHECKPOINTS).is_dir())


def load_params(path: str | Path) -> tuple[GPT2Config, dict]:
    """(config, params) from a params directory or a training workdir's latest good checkpoint.

    Params land on the default device; a padded vocabulary stays padded (see model.py).
    """
    path = Path(path).absolute()
    if not is_flax_dir(path):
        raise CheckpointError(f"{path}: neither a params directory nor a training workdir "
                              f"(no config.json + {PARAMS}/ or {CHECKPOINTS}/)")
    config = GPT2Config.from_json(path / "config.json")
    if (path / PARAMS).is_dir():
        try:
            with ocp.StandardCheckpointer() as checkpointer:
                return config, checkpointer.restore(path / PARAMS, _single_device(checkpointer.metadata(path / PARAMS)))
        except Exception as error:  # orbax/tensorstore raise many types for damaged files
            raise CheckpointError(f"{path / PARAMS}: unreadable ({type(error).__name__})") from None
    with TrainCheckpoints(path, read_only=True) as checkpoints:
        restored = checkpoints.restore_latest(lambda step: {PARAMS: ocp.args.StandardRestore(
            _single_device(checkpoints.manager.item_metadata(step)[PARAMS]))})
    if restored is None:
        raise CheckpointError(f"{path}: no checkpoint saved yet")
    return config, restored[1][PARAMS]


def _single_device(metadata_tree):
    """An abstract target that restores every array onto the default device, whatever it was saved from."""
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    metadata_tree = getattr(metadata_tree, "item_metadata", metadata_tree)  # StepMetadata -> TreeMetadata
    tree = getattr(metadata_tree, "tree", metadata_tree)
    return jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), tree)


class TrainCheckpoints:
    """The orbax CheckpointManager of a training workdir: keep the last `keep` steps, save async."""

    def __init__(self, workdir: str | Path, keep: int = 3, read_only: bool = False):
        self.read_only = read_only  # a reader never deletes, creates or sets aside anything
        options = ocp.CheckpointManagerOptions(max_to_keep=None if read_only else keep, create=not read_only,
                                               enable_async_checkpointing=True)
        handlers = {"params": ocp.StandardCheckpointHandler(), "opt_state": ocp.StandardCheckpointHandler(),
                    "data": grain.checkpoint.CheckpointHandler()}
        self.manager = ocp.CheckpointManager(Path(workdir).absolute() / CHECKPOINTS, options=options,
                                             item_handlers=handlers)

    def save(self, step: int, params, opt_state, data_iterator, force: bool = False) -> None:
        """Start writing step `step`; the arrays are copied off the device before this returns."""
        self.manager.save(step, force=force, args=ocp.args.Composite(
            params=ocp.args.StandardSave(params),
            opt_state=ocp.args.StandardSave(opt_state),
            data=grain.checkpoint.CheckpointSave(data_iterator),
        ))

    def restore_train_state(self, abstract_params, abstract_opt_state, data_iterator):
        """(step, params, opt_state) from the newest readable step, the iterator moved there; or None."""
        restored = self.restore_latest(lambda step: dict(
            params=ocp.args.StandardRestore(abstract_params),
            opt_state=ocp.args.StandardRestore(abstract_opt_state),
            data=grain.checkpoint.CheckpointRestore(data_iterator),
        ))
        if restored is None:
            return None
        step, items = restored
        return step, items["params"], items["opt_state"]

    def restore_latest(self, args_for_step):
        """(step, restored items) for the newest step that restores, older steps the fallback; None if none saved."""
        steps = sorted(self.manager.all_steps(), reverse=True)
        for step in steps:
            try:
                return step, self.manager.restore(step, args=ocp.args.Composite(**args_for_step(step)))
            except Exception as error:  # orbax/tensorstore raise many types for damaged files
                kept = "" if self.read_only else f" (kept as {self._set_aside(step)})"
                print(f"checkpoint step {step} is unreadable ({type(error).__name__}){kept}; "
                      "falling back to the one before", file=sys.stderr)
        if steps:
            raise CheckpointError(f"{self.manager.directory}: none of the saved steps {steps} is readable")
        return None

    def _set_aside(self, step: int) -> str:
        """Rename an unreadable step out of the way, so the resumed run can write that step again."""
        directory = Path(self.manager.directory)
        aside = next(directory / f"{step}.unreadable{n or ''}" for n in range(1000)
                     if not (directory / f"{step}.unreadable{n or ''}").exists())
        (directory / str(step)).rename(aside)
        self.manager.reload()
        return aside.name

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
