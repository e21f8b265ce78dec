"""Training curves as a PNG: train/val loss and HellaSwag against steps, baselines as lines."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402

PANELS = (("loss", ("train_loss", "val_loss")), ("HellaSwag acc_norm", ("hellaswag_acc_norm",)))


def plot_runs(runs: dict[str, list[dict]], out_path: str | Path, baselines: dict[str, dict] | None = None) -> Path:
    """One panel per metric family that any run logged; each run a line per metric.

    runs: {label: metrics.jsonl rows}; baselines: {label: {"val_loss": x, "hellaswag_acc_norm": y}},
    drawn as horizontal lines on the matching panel.
    """
    panels = [(title, names) for title, names in PANELS
              if any(name in row for rows in runs.values() for row in rows for name in names)]
    figure, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.5), squeeze=False)
    for axis, (title, names) in zip(axes[0], panels):
        for label, rows in runs.items():
            for name in names:
                points = [(row["step"], row[name]) for row in rows if name in row]
                if points:
                    noisy = name == "train_loss"  # every logged step: a thin line; evaluations: dots
                    axis.plot(*zip(*points), label=f"{label} {name}", marker=None if noisy else "o", markersize=3,
                              linewidth=1 if noisy else 1.8, alpha=0.6 if noisy else 1)
        for label, values in (baselines or {}).items():
            for name in names:
                if name in values:
                    axis.axhline(values[name], linestyle="--", color="black", linewidth=1.2, label=f"{label} {name}")
        axis.set(title=title, xlabel="step")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out_path, dpi=120)
    plt.close(figure)
    return Path(out_path)
