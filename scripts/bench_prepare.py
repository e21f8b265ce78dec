"""Throughput and peak memory of `python -m gpt2_jax.prepare` against build-nanogpt's fineweb.py loop
(scripts/peer_fineweb_prepare.py) on the same input, GPT-2 BPE, and whether their tokens agree.

Each runs in its own process tree; peak memory is the largest sum of the tree's resident memory (psutil,
sampled every 20 ms: workers included). MB/s is input bytes over wall time. The peer prepends
`<|endoftext|>` to every document, prepare puts it between documents: the streams must then agree as
peer == [eot] + ours.

    python scripts/bench_prepare.py --input docs.jsonl --workers 2 [--scratch /tmp/bench_prepare]
"""

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil

from gpt2_jax.cli import HelpFormatter
from gpt2_jax.shards import open_split

PEER = str(Path(__file__).with_name("peer_fineweb_prepare.py"))
EOT = 50256


def run(command: list[str]) -> tuple[float, int]:
    """(wall seconds, peak resident bytes of the process tree) of `command`; raises if it fails."""
    start, peak = time.perf_counter(), 0
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    root = psutil.Process(process.pid)
    while process.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
        except psutil.Error:  # a process ended while it was read
            pass
        time.sleep(0.02)
    if process.returncode:
        raise SystemExit(f"{' '.join(command)} failed ({process.returncode})")
    return time.perf_counter() - start, peak


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--input", required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--scratch", default="/tmp/bench_prepare", help="output directories, removed at the end")
    args = parser.parse_args()
    scratch, mb = Path(args.scratch), Path(args.input).stat().st_size / 1e6
    shutil.rmtree(scratch, ignore_errors=True)
    ours_cmd = [sys.executable, "-m", "gpt2_jax.prepare", "--input", args.input, "--out", str(scratch / "ours"),
                "--tokenizer", "gpt2", "--workers", str(args.workers), "--val-fraction", "0"]
    peer_cmd = [sys.executable, PEER, "--input", args.input, "--out", str(scratch / "peer"),
                "--workers", str(args.workers)]
    (ours_s, ours_rss), (peer_s, peer_rss) = run(ours_cmd), run(peer_cmd)
    ours = np.concatenate([tokens[s.start:s.stop] for tokens, s in open_split(scratch / "ours", "train")[1]])
    peer_files = sorted((scratch / "peer").glob("*.npy"), key=lambda f: f.stem[-6:])  # by index: val_000000 first
    peer = np.concatenate([np.load(f) for f in peer_files])
    agree = peer.size == ours.size + 1 and peer[0] == EOT and np.array_equal(peer[1:], ours)
    shutil.rmtree(scratch)
    print(f"{Path(args.input).name} ({mb:.0f} MB), --workers {args.workers}, {ours.size:,} tokens")
    for name, seconds, size, rss in (("prepare", ours_s, ours.size, ours_rss), ("peer   ", peer_s, peer.size, peer_rss)):
        print(f"  {name}: {mb / seconds:6.1f} MB/s, {size / seconds / 1e6:.2f} M tokens/s, "
              f"peak RSS {rss / 2**20:,.0f} MiB")
    print(f"  ratio (prepare / peer): speed {peer_s / ours_s:.2f}x, memory {ours_rss / peer_rss:.2f}x; "
          f"tokens {'agree (peer = [eot] + ours)' if agree else 'DIFFER'}")


if __name__ == "__main__":
    main()
