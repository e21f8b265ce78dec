"""Peak memory of loading and converting a checkpoint: gpt2_jax against transformers' from_pretrained.

Saves a random transformers GPT-2 of the given size (model.safetensors), then runs each path in a
fresh process and reads its peak resident memory (Linux's VmHWM) once its imports are done and at its
end, and its wall time. Prints what the path added to the peak as a multiple of the fp32 weights and of
what transformers `GPT2LMHeadModel.from_pretrained` added, the peer (its weights each read once). Linux only.

    python scripts/bench_load_memory.py --preset gpt2-large    # 3.1 GB of weights, ~10 GB of disk
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from gpt2_jax.cli import HelpFormatter
from gpt2_jax.config import PRESETS

# name: (imports, the path); each runs in its own process with sys.argv[1:] = (HF directory, scratch directory).
# The peer's tensors may stay memory-mapped, unread, until used: it sums every parameter, so all are read.
PATHS = {
    "transformers GPT2LMHeadModel.from_pretrained (peer)": (
        "import torch, transformers",
        "model = transformers.GPT2LMHeadModel.from_pretrained(sys.argv[1])\n"
        "with torch.no_grad(): sum(float(p.sum()) for p in model.parameters())"),
    "gpt2_jax from_hf (HF dir -> params)": ("from gpt2_jax import from_hf", "from_hf(sys.argv[1])"),
    "python -m gpt2_jax.convert --from-hf (HF dir -> params dir)": (
        "import gpt2_jax.convert",
        "cli('gpt2_jax.convert', '--from-hf', sys.argv[1], '--out', sys.argv[2] + '/params')"),
    "gpt2_jax load_model (params dir -> params)": (
        "from gpt2_jax.loading import load_model", "load_model(sys.argv[2] + '/params')"),
    "python -m gpt2_jax.convert --to-hf (params dir -> HF dir)": (
        "import gpt2_jax.convert",
        "cli('gpt2_jax.convert', '--to-hf', sys.argv[2] + '/params', '--out', sys.argv[2] + '/hf')"),
}
MEASURE = """
import json, runpy, sys, time
{imports}

def cli(module, *args):
    sys.argv = [module, *args]
    try:
        runpy.run_module(module, run_name="__main__")
    except SystemExit as stop:
        assert not stop.code, stop.code

def peak():
    return int(next(line for line in open("/proc/self/status") if line.startswith("VmHWM")).split()[1]) * 1024

imported, start = peak(), time.perf_counter()
{code}
print(json.dumps({{"imported": imported, "peak": peak(), "seconds": time.perf_counter() - start}}))
"""


def measure(imports: str, code: str, hf_dir: Path, scratch: Path) -> dict:
    program = MEASURE.format(imports=imports, code=code)
    result = subprocess.run([sys.executable, "-c", program, str(hf_dir), str(scratch)], capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"failed: {code}\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--preset", default="gpt2-medium", choices=list(PRESETS), help="the model's size")
    args = parser.parse_args()
    import torch
    import transformers

    shape = PRESETS[args.preset]
    with tempfile.TemporaryDirectory() as tmp:
        hf_dir, scratch = Path(tmp) / "hf_model", Path(tmp) / "scratch"
        scratch.mkdir()
        torch.manual_seed(0)
        model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**shape))
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        model.save_pretrained(hf_dir)
        del model
        print(f"{args.preset}: {weights / 2**30:.2f} GiB of fp32 weights; peak resident memory of each path, "
              f"in a fresh process; torch {torch.__version__}, transformers "
              f"{transformers.__version__}\n")
        print("| path | peak GiB | of it, imports | added GiB | added x weights | added x peer's | seconds |\n"
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        peer = None
        for name, (imports, code) in PATHS.items():
            row = measure(imports, code, hf_dir, scratch)
            added = row["peak"] - row["imported"]
            peer = peer or added
            print(f"| {name} | {row['peak'] / 2**30:.2f} | {row['imported'] / 2**30:.2f} | {added / 2**30:.2f} | "
                  f"{added / weights:.2f} | {added / peer:.2f} | {row['seconds']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
