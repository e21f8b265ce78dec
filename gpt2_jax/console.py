"""What a training run prints: its first line, a row per logged step (with elapsed time and ETA), its closing lines
(and the curves they point to)."""

from __future__ import annotations

import datetime
from pathlib import Path

from gpt2_jax import metrics
from gpt2_jax.model_dirs import CHECKPOINTS, LOSS_PLOT, METRICS
from gpt2_jax.plot import plot_run_or_warn

SAVING = "saving checkpoint"  # a row's note: its step's checkpoint is being written (in the background)
COLUMNS = {"train_loss": ("loss", ".4f"), "lr": ("lr", ".2e"), "grad_norm": ("grad norm", ".3f"),
           "param_norm": ("param norm", ".1f"), "tokens_per_sec": ("tok/s", ",.0f"), "mfu": ("mfu", ".1%"),
           "peak_memory_gib": ("peak GiB", ".1f"),
           "val_loss": ("val loss", ".4f"), "val_bpb": ("val bpb", ".4f"),
           "hellaswag_acc": ("hellaswag acc", ".4f"), "hellaswag_acc_norm": ("acc_norm", ".4f")}


def banner(n_params: int, c, accumulation: int, mesh, tokenizer: str, kernels: dict) -> str:
    """The run's first line: what it trains, on what, with which kernels (accelerator.model_kernels)."""
    devices = list(mesh.devices.flat)
    processes = len({device.process_index for device in devices})
    return (f"{n_params / 1e6:.2f}M params | {c.tokens_per_step:,} tokens/step = {accumulation} x {c.batch_size} x "
            f"{c.block_size} | {len(devices)} {devices[0].platform} devices"
            f"{f' of {processes} processes' if processes > 1 else ''}, mesh {dict(mesh.shape)} | {tokenizer} tokens | "
            f"{kernels['attention_impl']} attention" + " | q, k, v as three matmuls" * kernels["split_qkv"] +
            " | fused add+LayerNorm kernel" * kernels["fused_norm"])


def format_row(step: int, max_steps: int, row: dict, elapsed: float, eta: float | None, note: str = "") -> str:
    """`step   100/2000 | loss 2.6533 | lr 9.90e-04 | ... | 0:00:12, ETA 0:02:31[ | note]` for the console."""
    cells = []
    for name, value in row.items():
        label, spec = COLUMNS.get(name, (name, ".4f"))
        cells.append(f"{label} {value:{spec}}")
    cells += [duration(elapsed) + ("" if eta is None else f", ETA {duration(eta)}")] + [note] * bool(note)
    return f"step {step:{len(str(max_steps))}d}/{max_steps} | " + " | ".join(cells)


def close(workdir: Path, first: int, last: int, max_steps: int, seconds: float, stopped: bool, ran: bool) -> None:
    """Draws DIR/loss.png from its metrics.jsonl and prints the closing lines (`summary`) if this call `ran` a step
    or an evaluation; else (it found the run finished) only draws a loss.png that is missing (killed before it)."""
    if not ran and (workdir / LOSS_PLOT).exists():
        return  # an idle rerun leaves the workdir as it was
    rows = metrics.read_metrics(workdir)
    plot = plot_run_or_warn(rows, workdir / LOSS_PLOT)
    if ran:
        print(summary(rows, first, last, max_steps, seconds, workdir, plot, stopped))


def duration(seconds: float) -> str:
    return str(datetime.timedelta(seconds=round(seconds)))


def summary(rows: list[dict], first: int, last: int, max_steps: int, seconds: float, workdir: Path,
            plot: Path | None, stopped: bool = False) -> str:
    """Two lines: the steps this call ran (none: it evaluated step `last`) and the run's evaluations; where its
    files are. `stopped`: by a signal (at max_steps, in the last step's evaluation)."""
    vals = [(row["val_loss"], row["step"]) for row in rows if "val_loss" in row]
    evaluated = (f"; val loss {vals[-1][0]:.4f} at step {vals[-1][1]}, best {min(vals)[0]:.4f} at step "
                 f"{min(vals)[1]}" if vals else "")
    ended = "done" if last == max_steps and not stopped else "stopped"
    ran = f"steps {first}-{last} of {max_steps}" if first <= last else f"step {last}'s evaluation"
    return (f"{ended}: {ran} in {duration(seconds)}{evaluated}\n"
            f"checkpoints in {workdir / CHECKPOINTS}, metrics in {workdir / METRICS}"
            + (f", curves in {plot}" if plot else ""))
