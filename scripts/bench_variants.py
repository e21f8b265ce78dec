"""Ablations of the train step on one GPU: each variant in a fresh process, against the default in the same run.

XLA reads its flags once, when JAX starts, so every variant runs `scripts/bench_train.py` (ours only,
no peers) in its own process with its XLA_FLAGS and bench flags; the default runs first and last, so
drift on the machine shows. Prints a table of tokens/s, MFU, peak memory and the ratio to the mean of
the two default runs. A variant whose flag this XLA does not know fails alone ("failed" in the table).
Stops starting variants once --budget-s is spent, and ends by --budget-s + 150 s, so it fits a lent
machine's time. Compare tok/s: on a GPU the MFU column uses the datasheet peak, but on a CPU each
process measures its own matmul peak, so its MFU differs between variants.

    python scripts/bench_variants.py                          # GPT-2 124M, T=1024, bf16, B=64: ~40 s a variant
    python scripts/bench_variants.py --only default residual-bf16 --batch-size 16
    python scripts/bench_variants.py --budget-s 420 --peer torch-compile --cli-steps 15   # a GPU: the peer's and
                                                                   # the train CLI's rows too
    python scripts/bench_variants.py --cpu --peer torch-compile    # XLA:CPU's variants, the quickstart's shape, fp32
    python scripts/bench_variants.py --memory-configs configs/gpt2_774m.py configs/gpt2_1558m.py   # and each config's
                                         # peak memory in the train CLI (2 steps), right after the first default run
"""

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from gpt2_jax.cli import HelpFormatter, at_least  # noqa: E402  (argparse only: this process never starts JAX)
from train_cli_run import train_cli_run  # noqa: E402  (beside this script; its run is a process of its own)

# name: (XLA flags added to the defaults accelerator.py sets, bench_train.py flags); the most promising
# first, since the ones after --budget-s is spent are not run
VARIANTS = {
    "default": ([], []),  # the train CLI's kernels: on an NVIDIA GPU in bf16, cuDNN, split qkv, the fused norm
    "residual-bf16": ([], ["--residual-dtype", "bfloat16"]),
    "xla-norm": ([], ["--fused-norm", "off"]),
    "joined-qkv": ([], ["--split-qkv", "off"]),
    "xla-norm+joined-qkv": ([], ["--fused-norm", "off", "--split-qkv", "off"]),  # the default before 2026-11-27
    "autodiff-gelu": ([], ["--autodiff-gelu"]),  # the GELU before gelu.py: what that change gave
    "triton-priority-fusions": (["--xla_gpu_experimental_enable_triton_heroless_priority_fusion=true"], []),
    "triton-all-fusions": (["--xla_gpu_experimental_all_fusions_with_triton=true"], []),
    "block-level-fusions": (["--xla_gpu_experimental_enable_fusion_block_level_rewriter=true"], []),
    "unrolled-loops": (["--xla_gpu_enable_while_loop_unrolling=WHILE_LOOP_UNROLLING_FULL_UNROLL"], []),
    "scatter-unsorted": (["--xla_gpu_enable_scatter_determinism_expander=false"], []),
    "cublaslt": (["--xla_gpu_enable_cublaslt=true"], []),
    # the kernel retiled; measured on an H200 (2026-11-27): each ~1.3% slower than its default 64,2,4
    "fused-norm-4-row-tiles": ([], ["--fused-norm", "on", "--fused-norm-tiles", "64,4,4"]),
    "fused-norm-1-row-tiles": ([], ["--fused-norm", "on", "--fused-norm-tiles", "16,1,4"]),
}
# XLA:CPU's (--cpu): which library runs the dots and reductions (YNNPACK by default in jaxlib 0.10), and
# its scheduler; all exact in fp32 but for the summation order
CPU_VARIANTS = {
    "default": ([], []),
    "ynn-off": (["--xla_cpu_experimental_ynn_fusion_type="], []),  # XLA's own loops and Eigen's dots
    "ynn-dots-off": (["--xla_cpu_experimental_ynn_fusion_type=-individual_dot"], []),  # Eigen's dots only
    "onednn": (["--xla_cpu_use_onednn=true"], []),
    "concurrency-scheduler": (["--xla_cpu_enable_concurrency_optimized_scheduler=true"], []),
}
# bench_train.py's line for the train CLI's run (--cli-steps)
CLI_ROW = re.compile(r"^# its metrics.jsonl: median tokens_per_sec ([\d,]+), mfu ([\d.]+%)", re.MULTILINE)
ROW = re.compile(r"^\| \S+ B=\d+ \([^)]*\) \| [\d,]+ \| ([\d,]+) \| ([\d.]+%) \| ([\d.]+|-) \|")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--cpu", action="store_true",
                        help="XLA:CPU's variants; defaults: --shape quickstart --batch-size 12 --dtype float32")
    parser.add_argument("--only", nargs="+", choices=sorted({*VARIANTS, *CPU_VARIANTS}),
                        help="these variants (default: all of the GPU's, or of the CPU's with --cpu)")
    parser.add_argument("--shape", help="a bench_train.py shape (default: gpt2-124m-1024)")
    parser.add_argument("--batch-size", type=at_least(1), help="windows per step (default: 64)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), help="compute dtype (default: bfloat16)")
    parser.add_argument("--steps", type=at_least(1), default=20, help="timed steps per variant")
    parser.add_argument("--budget-s", type=float, default=420, help="start no variant after this many seconds")
    parser.add_argument("--profile", action="store_true", help="also print the first default run's kernel profile "
                        "(and with --peer, the peer's, from a process of its own)")
    parser.add_argument("--peer", choices=("torch-compile", "transformers"),
                        help="also time this PyTorch peer in the first default run (its row in the table)")
    parser.add_argument("--cli-steps", type=at_least(0), default=0,
                        help="also run the train CLI this many steps in the first default run (bench_train.py's "
                             "--cli-steps; its logged tok/s as a row)")
    parser.add_argument("--memory-configs", nargs="+", default=[], metavar="CONFIG",
                        help="also run the train CLI 2 steps with each config file as it is (its batch, remat, FSDP) "
                             "after the first default run, and report the peak device memory it logged")
    args = parser.parse_args()
    for name, gpu, cpu in (("shape", "gpt2-124m-1024", "quickstart"), ("batch_size", 64, 12),
                           ("dtype", "bfloat16", "float32")):
        if getattr(args, name) is None:
            setattr(args, name, cpu if args.cpu else gpu)
    return args


def run_variant(name, args, profile, timeout, peer=None, cli_steps=0):
    """(tok/s, MFU text, peak GiB text) or None, and the process's output."""
    xla_flags, bench_flags = (CPU_VARIANTS if args.cpu else VARIANTS)[name]
    env = {**os.environ, "XLA_FLAGS": " ".join([os.environ.get("XLA_FLAGS", ""), *xla_flags]).strip()}
    command = [sys.executable, str(ROOT / "scripts" / "bench_train.py"), "--shapes", args.shape, "--dtype", args.dtype,
               "--batch-sizes", str(args.batch_size), "--steps", str(args.steps), "--peers", *([peer] if peer else []),
               "--cli-steps", str(cli_steps), *bench_flags]
    try:
        result = subprocess.run(command + (["--profile"] if profile else []), capture_output=True, text=True,
                                env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout:.0f} s"
    for line in result.stdout.splitlines():
        if match := ROW.match(line):
            return (int(match[1].replace(",", "")), match[2], match[3]), result.stdout + result.stderr
    return None, result.stdout + result.stderr


def profile_peer(args, timeout):
    """The peer's kernels, from PyTorch's profiler in a process without JAX's (both profilers take CUPTI): its
    output's profile lines, or why there are none."""
    command = [sys.executable, str(ROOT / "scripts" / "bench_train.py"), "--shapes", args.shape, "--dtype", args.dtype,
               "--batch-sizes", str(args.batch_size), "--steps", "5", "--peers", args.peer, "--peers-only", "--profile"]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"# {args.peer}'s profile: timed out after {timeout:.0f} s"
    lines = [line for line in result.stdout.splitlines() if line.startswith(("# profile", "#  "))]
    last_line = (result.stdout + result.stderr).strip().splitlines()[-1:] or ["no output"]
    return "\n".join(lines) if lines else f"# {args.peer}'s profile failed: {last_line[0][:300]}"


def measure_memory(config: str, timeout: float) -> str:
    """A table row: the train CLI's peak device memory with `config` as it is, over 2 steps (or why none)."""
    logged, lines = train_cli_run(2, config=config, timeout=timeout)
    if not logged:
        print(f"# {config}: failed: {lines[-300:]}", flush=True)
        return f"| {config} | failed | |"
    gib = logged["peak_memory_gib"]
    peak = f"{gib:.1f}" if gib is not None else "- (this platform keeps no count)"
    print(f"# {config}: peak {peak} GiB", flush=True)
    return f"| {config} | {peak} | {lines[0].replace(' | ', '; ')} |"


def main():
    args = parse_args()
    variants = CPU_VARIANTS if args.cpu else VARIANTS
    names = [name for name in args.only or variants if name in variants] or sys.exit(
        f"none of --only is a{' CPU' if args.cpu else ' GPU'} variant{'' if args.cpu else ' (--cpu for the CPU ones)'}")
    order = ["default", *[n for n in names if n != "default"], "default"]
    start, results, failures, peer_tokens, cli, memory = time.perf_counter(), [], [], None, None, []

    def timeout():  # for the next process: all end by --budget-s + 150 s
        return min(300, max(60, args.budget_s + 150 - (time.perf_counter() - start)))

    for i, name in enumerate(order):
        if i and time.perf_counter() - start > args.budget_s:
            print(f"# budget spent: not run: {', '.join(order[i:])}", flush=True)
            break
        measured, output = run_variant(name, args, args.profile and i == 0, timeout(), args.peer if i == 0 else None,
                                       args.cli_steps if i == 0 else 0)
        if i == 0 and args.peer:
            peer_row = re.search(rf"^# {args.peer} \S+ B=\d+: ([\d,]+) tok/s", output, re.MULTILINE)
            peer_tokens = int(peer_row[1].replace(",", "")) if peer_row else None
        if i == 0 and args.cli_steps:
            cli = CLI_ROW.search(output)
        if args.profile and i == 0:
            print("\n".join(line for line in output.splitlines() if line.startswith("# profile") or
                            line.startswith("#  ")), flush=True)
        for line in output.splitlines():
            if line.startswith("# fused add + LayerNorm"):  # bench_train's check of the kernel on this device
                print(f"# {name}: {line[2:]}", flush=True)
        last_line = output.strip().splitlines()[-1][:300] if output.strip() else "no output"
        print(f"# {name}: " + (f"{measured[0]:,} tok/s" if measured else f"failed: {last_line}") +
              f" ({time.perf_counter() - start:.0f} s)", flush=True)
        results.append((name, measured))
        failures.append(None if measured else f"{name}: {last_line}")
        if i == 0 and args.profile and args.peer:
            print(profile_peer(args, timeout()), flush=True)
        if i == 0:
            memory = [measure_memory(config, timeout()) for config in args.memory_configs]
    if not any(measured for _, measured in results):
        sys.exit(f"every run failed; the first: {failures[0] if failures else 'none ran'}")
    defaults = [m[0] for n, m in results if n == "default" and m]
    baseline = sum(defaults) / len(defaults) if defaults else None
    print(f"\n{args.shape}, B={args.batch_size}, {args.dtype}; default runs: {', '.join(f'{d:,}' for d in defaults)} tok/s\n")
    print("| variant | tok/s | MFU | peak GiB | vs default |\n| --- | ---: | ---: | ---: | ---: |")
    for name, measured in results:
        if measured is None:
            print(f"| {name} | failed | | | |")
        else:
            ratio = f"{measured[0] / baseline:.3f}x" if baseline else "-"
            print(f"| {name} | {measured[0]:,} | {measured[1]} | {measured[2]} | {ratio} |")
    if args.peer:
        ratio = f"{peer_tokens / baseline:.3f}x" if peer_tokens and baseline else "-"
        print(f"| {args.peer} (PyTorch, in the first default's run) | {f'{peer_tokens:,}' if peer_tokens else 'failed'} "
              f"| | | {ratio} |")
    if memory:
        print("\n| config (the train CLI, 2 steps, as the file sets it) | peak device memory GiB (JAX's allocator) | "
              "its first line |\n| --- | ---: | --- |\n" + "\n".join(memory))
    if args.cli_steps:
        ratio = f"{int(cli[1].replace(',', '')) / baseline:.3f}x" if cli and baseline else "-"
        print(f"| the train CLI, {args.cli_steps} steps (its metrics.jsonl, in the first default's run) | "
              f"{cli[1] if cli else 'failed'} | {cli[2] if cli else ''} | | {ratio} |")


if __name__ == "__main__":
    main()
