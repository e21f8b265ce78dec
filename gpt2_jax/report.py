"""How did the run do? `python -m gpt2_jax.report --workdir DIR [--baseline gpt2]`.

Writes DIR/report.md (a table of the run's last and best evaluations) and DIR/report.png (its
curves), from its metrics.jsonl alone. With --baseline (a hub name, HF directory, params
directory or workdir), the table is the run's last evaluation against the baseline's, which is
evaluated on the run's own validation windows (the ones its evaluations used) and, if the run
scored HellaSwag, on the same examples; the plot draws it as dashed lines. A baseline of another
tokenizer (or a shorter context) is compared in bits per byte only, over the text of those
windows read with its own tokenizer and context (data.py's TextWindows).
"""

from __future__ import annotations

from pathlib import Path

from gpt2_jax import hellaswag
from gpt2_jax.cli import argument_parser
from gpt2_jax.data import TextWindows, WindowSource, read_documents
from gpt2_jax.device_errors import out_of_memory_as_user_error
from gpt2_jax.cli_main import exit_on_user_error
from gpt2_jax.errors import UserError
from gpt2_jax.evaluator import Evaluator
from gpt2_jax.loading import load_replicated
from gpt2_jax.metrics import read_metrics
from gpt2_jax.model_dirs import TRAIN_CONFIG
from gpt2_jax.outdir import refuse_unwritable, write_file
from gpt2_jax.plot import plot_runs
from gpt2_jax.shards import read_meta
from gpt2_jax.workdir import DATA_FINGERPRINT, data_fingerprint, read_settings

COMPARED = (("val_loss", "val loss", "lower"), ("val_bpb", "val bpb", "lower"),
           ("hellaswag_acc_norm", "HellaSwag acc_norm", "higher"))
# What evaluate_baseline reads of the run's train_config.json, and the types it must find there.
BASELINE_SETTINGS = {"data_dir": str, "block_size": int, "batch_size": int, "eval_batches": int, "hellaswag": str,
                     "hellaswag_limit": int}


def baseline_settings(workdir: Path) -> dict:
    """The run's settings that say what its evaluations measured, checked: its data_dir must still hold the
    data it trained on (workdir.data_fingerprint), or the baseline would be scored on other windows."""
    settings = read_settings(workdir, BASELINE_SETTINGS)
    data_dir = Path(settings["data_dir"])
    if not data_dir.is_absolute() and not data_dir.exists():
        raise UserError(f"the run's data_dir {data_dir} (train_config.json) is relative to where it trained, and not "
                        f"found from {Path.cwd()}: run the report from there")
    fingerprint = data_fingerprint(read_meta(data_dir))
    if settings.get(DATA_FINGERPRINT, fingerprint) != fingerprint:  # a run from before fingerprints: none to compare
        raise UserError(f"{data_dir} no longer holds the data that the run in {workdir} evaluated on (other shards "
                        "or splits): its windows are gone, so no baseline can be scored on them")
    return settings


def evaluate_baseline(reference: str, run_config: dict) -> tuple[dict, list[str]]:
    """The baseline's val_loss / val_bpb / hellaswag_acc_norm on what the run measured, and notes on the rest."""
    loaded, model, mesh, params = load_replicated(reference)
    data_dir, block_size = run_config["data_dir"], run_config["block_size"]
    data_tokenizer = read_meta(data_dir)["tokenizer"]
    windows = run_config["eval_batches"] * run_config["batch_size"]
    same_windows = data_tokenizer == loaded.tokenizer.name and block_size <= loaded.config.n_positions
    if same_windows:
        val = WindowSource(data_dir, "val", block_size)
    else:  # the text of the run's windows, all of it
        text = read_documents(data_dir, windows * block_size + 1 if windows else 0, loaded.tokenizer)
        val, windows = TextWindows(text, loaded.tokenizer, loaded.config.n_positions), 0
    examples = (hellaswag.load_examples(run_config["hellaswag"], run_config["hellaswag_limit"])
                if run_config["hellaswag"] else ())
    results = Evaluator(model, mesh, loaded.tokenizer, run_config["batch_size"], val, windows, examples)(params)
    values, notes = {"val_bpb": results["val_loss"]["bpb"]}, []
    if same_windows:
        values["val_loss"] = results["val_loss"]["loss"]
    else:
        why = (f"{reference} reads {loaded.tokenizer.name} tokens, the run {data_tokenizer} tokens"
               if data_tokenizer != loaded.tokenizer.name else f"the run's block_size exceeds {reference}'s context")
        notes.append(f"val loss not compared ({why}); val bpb of {reference} over the text of the run's windows, "
                     "read with its own tokenizer and context")
    if "hellaswag" in results:
        values["hellaswag_acc_norm"] = results["hellaswag"]["acc_norm"]
    return values, notes


def write_report(workdir: str | Path, baseline: str | None = None) -> tuple[Path, Path]:
    """Write DIR/report.md and DIR/report.png, against `baseline` if given; returns their paths."""
    workdir = Path(workdir)
    rows = read_metrics(workdir)
    if not (workdir / TRAIN_CONFIG).exists():
        raise UserError(f"{workdir}: not a training workdir (no {TRAIN_CONFIG}); give the --workdir a run trained in")
    if not any("val_loss" in row for row in rows):
        raise UserError(f"{workdir}: no evaluation yet (no val_loss in metrics.jsonl); "
                        "a run evaluates every eval_every steps (0: never)")
    markdown, picture = workdir / "report.md", workdir / "report.png"
    for path in (markdown, picture):  # before a baseline's evaluation (minutes), not after it
        refuse_unwritable(path)
    if baseline:
        settings = baseline_settings(workdir)
        values, notes = evaluate_baseline(baseline, settings)
        lines = [f"# {workdir.name} against {baseline}", "", *table_against(rows, values), "",
                 *(f"- {note}" for note in notes)]
    else:
        values, lines = {}, [f"# {workdir.name}", "", *table_alone(rows)]
    plot_runs({workdir.name: rows}, picture, {baseline: values} if baseline else None)  # whole, or one line
    write_file(markdown, lambda path: path.write_text("\n".join([*lines, "", "![curves](report.png)", ""])))
    return markdown, picture


def table_alone(rows: list[dict]) -> list[str]:
    """Markdown lines: each metric's last and best evaluation."""
    lines = ["| metric | better | last (step) | best (step) |", "| --- | --- | ---: | ---: |"]
    for name, title, better in COMPARED:
        evaluated = [row for row in rows if name in row]
        if evaluated:
            last, best = evaluated[-1], (min if better == "lower" else max)(evaluated, key=lambda row: row[name])
            lines.append(f"| {title} | {better} | {last[name]:.4f} ({last['step']}) | "
                         f"{best[name]:.4f} ({best['step']}) |")
    return lines


def table_against(rows: list[dict], values: dict) -> list[str]:
    """Markdown lines: each metric's last evaluation against the baseline's value, and the first step that beat it."""
    lines = ["| metric | better | run (step) | baseline | run wins |", "| --- | --- | ---: | ---: | --- |"]
    for name, title, better in COMPARED:
        evaluated = [row for row in rows if name in row]
        if not evaluated or name not in values:
            continue
        beats = (lambda row: row[name] < values[name]) if better == "lower" else (lambda row: row[name] > values[name])
        last, passed = evaluated[-1], next((row["step"] for row in evaluated if beats(row)), None)
        lines.append(f"| {title} | {better} | {last[name]:.4f} ({last['step']}) | {values[name]:.4f} | "
                     f"{'yes' if beats(last) else 'no'}{f', from step {passed}' if passed else ''} |")
    return lines


@exit_on_user_error
def main(argv=None):
    parser = argument_parser("report", __doc__)
    parser.add_argument("--workdir", required=True, help="the training run to report on")
    parser.add_argument("--baseline", help="a model to compare with: hub name, HF directory, params directory or "
                        "workdir (default: none, the run's own numbers)")
    args = parser.parse_args(argv)
    with out_of_memory_as_user_error("the baseline is scored in the run's batches (its batch_size); report on "
                                     "a machine with more memory, or score it with gpt2_jax.evaluate --batch-size N"):
        markdown, picture = write_report(args.workdir, args.baseline)
    print(markdown.read_text())
    print(f"wrote {markdown} and {picture}")


if __name__ == "__main__":
    main()
