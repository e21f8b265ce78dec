"""Draw the loss curves of one or more training workdirs to a PNG.

    python scripts/plot.py runs/shakespeare_byte [runs/other ...] --out loss.png
"""

import argparse
from pathlib import Path

from gpt2_jax.metrics import read_metrics
from gpt2_jax.plot import plot_runs


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workdirs", nargs="+")
    parser.add_argument("--out", default="loss.png")
    args = parser.parse_args()
    runs = {Path(w).name: read_metrics(w) for w in args.workdirs}
    empty = [name for name, rows in runs.items() if not rows]
    if empty:
        parser.error(f"no metrics.jsonl rows in {empty}")
    print(f"wrote {plot_runs(runs, args.out)}")


if __name__ == "__main__":
    main()
