"""Draw the loss curves of one or more training workdirs to a PNG.

    python scripts/plot.py runs/shakespeare_byte [runs/other ...] --out loss.png

Runs of different tokenizers (a byte model beside a GPT-2 BPE one) are drawn in bits per byte
only: their per-token losses are on different scales.
"""

import os
from pathlib import Path

from matplotlib.backend_bases import FigureCanvasBase

from gpt2_jax.cli import HelpFormatter, OneLineErrors
from gpt2_jax.config import GPT2Config
from gpt2_jax.cli_main import exit_on_user_error
from gpt2_jax.errors import UserError
from gpt2_jax.metrics import read_metrics
from gpt2_jax.plot import plot_runs
from gpt2_jax.tokenizer import VOCAB_SIZES


def tokenizer_name(workdir: str) -> str:
    """The tokenizer of a workdir's model, from its config.json's vocabulary."""
    vocab_size = GPT2Config.from_json(Path(workdir) / "config.json").vocab_size
    return next((name for name, size in VOCAB_SIZES.items() if size == vocab_size), f"vocab {vocab_size}")


@exit_on_user_error
def main(argv=None):
    parser = OneLineErrors(prog="python scripts/plot.py", description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("workdirs", nargs="+", help="training workdirs (each with metrics.jsonl)")
    parser.add_argument("--out", default="loss.png", help="the image to write (.png, .pdf, .svg, ...)")
    args = parser.parse_args(argv)
    out, formats = Path(args.out).absolute(), FigureCanvasBase.get_supported_filetypes()
    if out.suffix.lstrip(".").lower() not in formats:
        raise UserError(f"--out {args.out}: give a file ending in one of .{', .'.join(sorted(formats))}")
    if out.is_dir() or not os.access(out.parent, os.W_OK):
        raise UserError(f"--out {args.out}: a directory, or in a directory that is missing or read-only")
    for workdir in map(Path, args.workdirs):
        if not (workdir / "metrics.jsonl").is_file():
            missing = "no metrics.jsonl (not a training workdir?)" if workdir.is_dir() else "no such directory"
            raise UserError(f"{workdir}: {missing}")
    names = [Path(w).name for w in args.workdirs]  # a run's label; its path where two share a name
    runs = {(name if names.count(name) == 1 else w): read_metrics(w) for name, w in zip(names, args.workdirs)}
    empty = [name for name, rows in runs.items() if not rows]
    if empty:
        raise UserError(f"nothing logged yet in {', '.join(empty)}")
    tokenizers = {tokenizer_name(w) for w in args.workdirs}
    if len(tokenizers) > 1:
        if not all(any("val_bpb" in row for row in rows) for rows in runs.values()):
            raise UserError(f"the runs use different tokenizers ({', '.join(sorted(tokenizers))}) and not all logged val_bpb")
        print(f"different tokenizers ({', '.join(sorted(tokenizers))}): drawing bits per byte, not per-token losses")
    print(f"wrote {plot_runs(runs, args.out, per_token=len(tokenizers) == 1)}")


if __name__ == "__main__":
    main()
