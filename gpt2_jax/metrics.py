"""What a training run reports: metrics.jsonl and TensorBoard (its clock: throughput.py; MFU's FLOPs: flops.py)."""

from __future__ import annotations

import contextlib
import json
import math
import sys
from pathlib import Path

from gpt2_jax.errors import UserError
from gpt2_jax.model_dirs import METRICS
from gpt2_jax.outdir import write_file


class DivergedError(UserError):
    """A loss, gradient or parameter norm that is not finite: the run stops before saving it."""


def check_finite(step: int, metrics: dict, last_good: int | None) -> None:
    """DivergedError, naming the last good checkpoint, unless every value of `metrics` is finite."""
    if all(math.isfinite(value) for value in metrics.values()):
        return
    saved = f"the last good checkpoint is step {last_good}" if last_good else "no checkpoint was saved"
    raise DivergedError(f"{', '.join(f'{k} {v}' for k, v in metrics.items())} at step {step}: stopped; {saved}. "
                        "Lower learning_rate and rerun to resume")


class MetricsWriter:
    """DIR/metrics.jsonl (one JSON object per logged step) and TensorBoard events in DIR/tensorboard.

    On resume from step S, lines of steps after S (logged before the run was killed, and
    about to be logged again) are dropped when training begins (`begin`, or the first row), so the
    file reads as one straight run; a start that trains nothing leaves the file as it was.
    """

    def __init__(self, workdir: str | Path, resume_step: int = 0, enabled: bool = True):
        self.enabled, self.resume_step, self.tensorboard, self.failed = enabled, resume_step, None, False
        self.workdir, self.path = Path(workdir), Path(workdir) / METRICS
        self.kept = None  # the lines to keep, read now: a damaged file stops the run before it trains
        self.evaluated = set()  # the steps with a val_loss row among them
        if enabled and self.path.exists():
            kept = [(line, row) for line, row in _lines_and_rows(self.path) if row["step"] <= resume_step]
            self.kept, self.evaluated = [line for line, _ in kept], {r["step"] for _, r in kept if "val_loss" in r}

    def write(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        try:
            if self.tensorboard is None:
                self.begin()
            with open(self.path, "a") as file:
                file.write(json.dumps({"step": step, **metrics}) + "\n")
            for name, value in metrics.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self.tensorboard.add_scalar(name, value, step)
            self.tensorboard.flush()
        except OSError as error:  # a full disk: one line, not a traceback
            self.failed = True
            raise UserError(f"{self.path}: cannot write step {step}'s metrics ({error.strerror or error}); make room "
                            "and rerun to resume from the last checkpoint") from None

    def begin(self) -> None:
        """The first step has run: drop the rows after the resume step, start TensorBoard's events."""
        if not self.enabled or self.tensorboard is not None:
            return
        from tensorboardX import SummaryWriter

        if self.kept is not None:  # whole or not at all (a kill while writing keeps the old file); else one line
            write_file(self.path, lambda path: path.write_text("".join(line + "\n" for line in self.kept)))
        try:
            self.tensorboard = SummaryWriter(str(self.workdir / "tensorboard"), purge_step=self.resume_step + 1)
        except OSError as error:  # not writable (another user's files), a full disk, a file where a folder goes
            raise UserError(f"cannot write {self.workdir / 'tensorboard'}: {error.strerror or error}") from None

    def close(self) -> None:
        """Close TensorBoard's events file. Its last events unwritable (a full disk) are a warning, or nothing where
        a write of this writer failed already (that is the run's one line); either way its writer is left closed,
        else tensorboardX's exit handler tried again and printed a traceback."""
        tensorboard, self.tensorboard = self.tensorboard, None
        try:
            if tensorboard is not None:
                tensorboard.close()
        except OSError as error:
            # What tensorboardX's close does after the flush that failed (its private parts: if they change, its
            # exit handler's traceback is back, the run's one line kept all the same).
            for events in (writer.event_writer for writer in tensorboard.all_writers.values()):
                with contextlib.suppress(OSError, AttributeError):
                    events._worker.stop()
                    events._closed = True
                    events._ev_writer.close()
            if not self.failed:
                print(f"warning: cannot write {self.workdir / 'tensorboard'}'s last events "
                      f"({error.strerror or error}); metrics.jsonl holds them", file=sys.stderr)


def read_metrics(workdir: str | Path) -> list[dict]:
    """The rows of DIR/metrics.jsonl."""
    path = Path(workdir) / METRICS
    return [row for _, row in _lines_and_rows(path)] if path.exists() else []


def _lines_and_rows(path: Path) -> list[tuple[str, dict]]:
    """(line, row) for each line of a metrics.jsonl; a last line cut short (a run killed mid-write) is dropped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or error
        raise UserError(f"{path}: cannot be read as a metrics file ({reason})") from None
    pairs = []
    for number, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                continue
            row = None
        if not (isinstance(row, dict) and type(row.get("step")) is int and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in row.values())):
            raise UserError(f"{path}:{number}: not a metrics row (a JSON object of numbers with an integer step)")
        pairs.append((line, row))
    return pairs
