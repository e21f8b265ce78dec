"""A training workdir's checkpoints: orbax's CheckpointManager, with every failure a clear one.

Each step holds params, opt_state, the grain iterator's position, the checksums of both states and a copy of that
position (integrity.py). A restore takes the newest whole step: one saved with other shapes, or that the machine
could not read (checkpoint_failures.py), stops the run, its files untouched; a damaged one (undecodable, failing or
lacking its checks) is set aside as `<step>.unreadable` (readers move nothing) and the one before is tried; what
any process could not read, all act on. Saves run in the background; a failed one stops it, naming the last good step.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import grain
import jax
import orbax.checkpoint as ocp

from gpt2_jax import checkpoint_failures, integrity
from gpt2_jax.checkpoint_failures import CheckpointError
from gpt2_jax.model_dirs import CHECKPOINTS


class TrainCheckpoints:
    """The orbax CheckpointManager of a training workdir: keep the last `keep` steps, save async."""

    def __init__(self, workdir: str | Path, keep: int = 3, read_only: bool = False):
        self.read_only = read_only  # a reader never deletes, creates or sets aside anything
        self.directory = Path(workdir).absolute() / CHECKPOINTS
        self.pending, self.failed = None, False  # the step being written in the background; a save failed
        # A step's directories are made before save() returns (made in the background, a failure to make them left
        # the save waiting forever, deaf to Ctrl-C); runs killed mid-save leave unfinished steps, removed at a start.
        options = ocp.CheckpointManagerOptions(
            max_to_keep=None if read_only else keep, create=not read_only, cleanup_tmp_directories=not read_only,
            async_options=ocp.options.AsyncOptions(create_directories_asynchronously=False))  # saves async by default
        handlers = checkpoint_failures.failures_kept({  # each process's reads, agreed on
            "params": ocp.StandardCheckpointHandler(), "opt_state": ocp.StandardCheckpointHandler(),
            "data": grain.checkpoint.CheckpointHandler(), "checksum": ocp.JsonCheckpointHandler()})
        checkpoint_failures.quiet_orbax_failures()
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

    def save(self, step: int, params, opt_state, data_iterator, force: bool = False) -> None:
        """Start writing step `step`; the arrays are copied off the device before this returns."""
        self.wait()  # a failure of the previous save stops the run here
        checksums = integrity.state_checksums({"params": params, "opt_state": opt_state}, data_iterator)
        try:
            self.manager.save(step, force=force, args=ocp.args.Composite(
                params=ocp.args.StandardSave(params), opt_state=ocp.args.StandardSave(opt_state),
                data=grain.checkpoint.CheckpointSave(data_iterator), checksum=ocp.args.JsonSave(checksums)))
        except Exception as error:  # orbax/tensorstore raise many types for a failed write
            raise self._save_failed(step, error) from None
        self.pending = step

    def check(self) -> None:
        """CheckpointError if the background save failed. Cheap; one process only (several stop at the next save)."""
        if self.pending is not None and jax.process_count() == 1 and not self.manager.is_saving_in_progress():
            self.wait()

    def wait(self) -> None:
        """Wait for the background save; raise CheckpointError if it failed."""
        if self.failed:
            return  # reported once already; orbax would raise it again
        try:
            self.manager.wait_until_finished()
        except Exception as error:  # orbax/tensorstore raise many types for a failed write
            raise self._save_failed(self.pending, error) from None
        self.pending = None

    def _save_failed(self, step: int, error: Exception) -> CheckpointError:
        self.pending, self.failed = None, True
        self.manager.reload()
        reason, saved = checkpoint_failures.failure_reason(error), self.manager.all_steps()
        if step in saved:  # in place: what failed came after (removing the steps past `keep`)
            return CheckpointError(f"checkpoint step {step} is saved in {self.directory}, but what follows a save "
                                   f"failed ({reason}: removing older steps?); rerun: the run resumes from step {step}")
        last = f"the last good checkpoint is step {max(saved)}" if saved else "no checkpoint was saved before it"
        return CheckpointError(f"saving checkpoint step {step} in {self.directory} failed ({reason}); {last}")

    def restore_train_state(self, abstract_params, abstract_opt_state, data_iterator):
        """(step, params, opt_state) from the newest whole step, the iterator moved there; or None if none saved."""
        targets = {"params": abstract_params, "opt_state": abstract_opt_state}
        restored = self.restore_latest(lambda metadata: targets, data_iterator)
        return restored and (restored[0], restored[1]["params"], restored[1]["opt_state"])

    def restore_latest(self, targets_for: Callable[[dict], dict], data_iterator=None, retries: int = 3):
        """(step, {name: restored}) for the newest whole step; `targets_for(step's metadata)` gives the
        abstract tree of each state to restore. None if no step was ever saved (a reader raises)."""
        steps, damaged = sorted(self.manager.all_steps(), reverse=True), []
        for step in steps:
            try:
                return step, self._restore(step, targets_for, data_iterator)
            except checkpoint_failures.Unreadable as damage:
                if damage.machine:  # the machine, not the files
                    raise CheckpointError(f"cannot restore step {step} of {self.directory}: {damage}; its files "
                                          "are left as they are: rerun once they can be read") from None
                aside = None if self.read_only else integrity.set_aside(self.directory, step)  # every process
                self.manager.reload()
                if self.read_only and retries and (step not in (now := self.manager.all_steps()) or max(now) > steps[0]):
                    return self.restore_latest(targets_for, data_iterator, retries - 1)  # a trainer moved on: anew
                damaged.append(f"step {step}")
                print(f"checkpoint step {step} is damaged ({damage}){aside and f', set aside as {aside}' or ''}; " + (
                      "restoring the one before" if step != steps[-1] else "no step is left before it"), file=sys.stderr)
        set_aside = sorted(p.name for p in self.directory.glob(f"*{integrity.SET_ASIDE}*"))
        if not (steps or set_aside or self.read_only):
            return None  # a new run
        if not (steps or set_aside):
            raise CheckpointError(f"{self.directory.parent}: no checkpoint saved yet")
        start_over = "" if self.read_only else (f"; to start again from step 0, move them out of {self.directory}, "
                                                "or use a new --workdir")  # never silently over them
        kind, named = ("damaged", damaged + set_aside) if self.read_only else ("set aside as damaged", set_aside)
        raise CheckpointError(f"{self.directory.parent}: no readable checkpoint ({kind}: {', '.join(named)}){start_over}")

    def _restore(self, step: int, targets_for: Callable[[dict], dict], data_iterator) -> dict:
        try:
            metadata = self.manager.item_metadata(step)
            targets = targets_for(metadata)
            differences = [integrity.shape_difference(metadata[name], target) for name, target in targets.items()]
        except Exception as error:  # orbax raises many types for damaged metadata
            checkpoint_failures.agree(checkpoint_failures.unreadable("unreadable metadata", error))
        checkpoint_failures.agree(None)
        for difference in filter(None, differences):
            raise CheckpointError(f"checkpoint step {step} of {self.directory.parent} {difference}: a setting "
                                  "that changes the model's shapes differs from the run that saved it; use "
                                  "that run's settings, or a new --workdir")
        args = {name: ocp.args.StandardRestore(target) for name, target in targets.items()}
        if data_iterator is not None:
            args["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        if "checksum" in metadata:  # steps saved before checksums existed have none (integrity.first_mismatch)
            args["checksum"] = ocp.args.JsonRestore()
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(**args))
            error = checkpoint_failures.failure_of(restored[name] for name in args)
        except Exception as raised:  # orbax/tensorstore raise many types for damaged files
            error = raised
        checkpoint_failures.agree(error and checkpoint_failures.unreadable("unreadable", error))
        if mismatch := integrity.first_mismatch(restored, targets, data_iterator, self.directory, step):
            raise checkpoint_failures.Unreadable(mismatch)
        return restored

    def close(self) -> None:
        """Finish the pending save (raising CheckpointError if it failed) and release orbax's threads."""
        try:
            self.wait()
        finally:
            try:
                self.manager.close()
            except Exception:  # after a failed save orbax raises that failure again; it was reported
                if not self.failed:
                    raise
