"""Training curves as a PNG: train/val loss, val bits per byte and HellaSwag against steps (or any
logged quantity), baselines as lines. Per-token losses of different tokenizers are on different
scales: runs of different tokenizers are drawn on the bits-per-byte axis only (per_token=False)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from gpt2_jax.errors import UserError
from gpt2_jax.outdir import write_file

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# (title, y axis label, metrics drawn on it)
PANELS = (("loss", "nats per token", ("train_loss", "val_loss")), ("val bits per byte", "bits per byte", ("val_bpb",)),
          ("HellaSwag", "acc_norm", ("hellaswag_acc_norm",)))


def plot_runs(runs: dict[str, list[dict]], out_path: str | Path, baselines: dict[str, dict] | None = None,
              x: str = "step", per_token: bool = True) -> Path:
    """Draw `figure(...)` to `out_path` (PNG, PDF, SVG...: its suffix), whole or not at all; returns the path.
    UserError if it cannot."""
    drawn = figure(runs, baselines, x, per_token)
    write_file(Path(out_path), lambda path: drawn.savefig(path, dpi=120))  # the format: the suffix
    return Path(out_path)


def plot_run_or_warn(rows: list[dict], out_path: Path) -> Path | None:
    """A training run's curves to `out_path`; if they cannot be written, a warning (the run is saved, its metrics
    written: a picture is not worth an error) and None."""
    try:
        return plot_runs({out_path.parent.name: rows}, out_path) if rows else None
    except UserError as error:
        print(f"warning: {error}", file=sys.stderr)


def figure(runs: dict[str, list[dict]], baselines: dict[str, dict] | None = None, x: str = "step",
           per_token: bool = True) -> Figure:
    """One panel per metric family that any run logged; each run a line per metric, against row[x].

    runs: {label: metrics.jsonl rows}; baselines: {label: {"val_loss": value, "val_bpb": value, ...}},
    drawn as horizontal lines on the matching panel; per_token=False leaves the loss panel out.
    """
    # matplotlib's Figure, not pyplot: no backend chosen for the importer (a notebook keeps its own), no figure
    # kept open; imported here, so a run pays its 0.3 s only when it draws
    from matplotlib.figure import Figure

    panels = [(title, unit, names) for title, unit, names in PANELS[0 if per_token else 1 :]
              if any(name in row for rows in runs.values() for row in rows for name in names)]
    if not panels:
        wanted = [name for _, _, names in PANELS[0 if per_token else 1 :] for name in names]
        raise UserError(f"nothing to plot: no metrics.jsonl row of {', '.join(runs)} has {', '.join(wanted)}")
    drawn = Figure(figsize=(6.5 * len(panels), 4.5))
    axes = drawn.subplots(1, len(panels), squeeze=False)
    for axis, (title, unit, names) in zip(axes[0], panels):
        for label, rows in runs.items():
            for name in names:
                points = [(row[x], row[name]) for row in rows if name in row]
                if points:
                    noisy = name == "train_loss"  # every logged step: a thin line; evaluations: dots
                    axis.plot(*zip(*points), label=f"{label} {name}", marker=None if noisy else "o", markersize=3,
                              linewidth=1 if noisy else 1.8, alpha=0.6 if noisy else 1)
        for label, values in (baselines or {}).items():
            for name in names:
                if name in values:
                    axis.axhline(values[name], linestyle="--", color="black", linewidth=1.2, label=f"{label} {name}")
        axis.set(title=title, xlabel=x.replace("_", " "), ylabel=unit)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    drawn.tight_layout()
    return drawn
