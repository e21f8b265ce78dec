"""Training speed: gpt2_jax's train step against PyTorch peers on the same shapes, same machine, same run.

For each shape and batch size, a whole optimizer step (forward, backward, global-norm clipping,
AdamW) on random windows, timed after warm-up steps; tokens/s, MFU and the ratio to each peer:
  transformers    transformers' GPT2LMHeadModel, eager (bf16 autocast with --dtype bfloat16)
  torch-compile   nanoGPT's model and step: SDPA (is_causal), fused AdamW, bf16 autocast, vocab
                  padded to 50304, clip 1.0, torch.compile (on a CPU: inductor's C++ kernels)
gpt2_jax runs its compiled, sharded step over every device (on a CPU host: --cpu-devices). MFU's
peak is the datasheet bf16 rate where flops.PEAK_FLOPS knows the device, else the matmul rate
measured here in the compute dtype. --cli-steps N also runs `python -m gpt2_jax.train` for N
steps on random tokens (configs/gpt2_124m.py, batch = the largest --batch-sizes, and the variant's
--split-qkv, --fused-norm, --residual-dtype) and reports what its metrics.jsonl logged, so the
number users see is checked against this one. --profile prints the device time by kernel of ours, or
with --peers-only (no JAX step: one profiler per process), the peers' from PyTorch's profiler.

    python scripts/bench_train.py --cpu-devices 1
    python scripts/bench_train.py --shapes gpt2-124m-1024 --dtype bfloat16 --batch-sizes 16 64 \\
        --peers torch-compile transformers --cli-steps 15        # a GPU: the whole comparison
    python scripts/bench_train.py --shapes gpt2-124m-1024 --dtype bfloat16 --batch-sizes 64 \
        --peers torch-compile --peers-only --profile               # where the peer's step goes
"""

import argparse
import functools
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from gpt2_jax.cli import HelpFormatter, at_least  # noqa: E402  (argparse only: the flags are read before jax starts)
import model_variants  # noqa: E402  (beside this script; argparse only too)
from train_cli_run import train_cli_run  # noqa: E402  (beside this script; no JAX either)
SHAPES = {  # n_layer, n_head, n_embd, block_size, batch (windows per step), vocab
    "quickstart": (4, 4, 128, 64, 12, 257),
    "gpt2-124m-256": (12, 12, 768, 256, 4, 50257),
    "gpt2-124m-1024": (12, 12, 768, 1024, 16, 50257),
}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=["quickstart", "gpt2-124m-256"], choices=list(SHAPES),
                        help="the models to time")
    parser.add_argument("--batch-sizes", nargs="+", type=at_least(1), help="windows per step (default: the shape's)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="compute dtype")
    parser.add_argument("--steps", type=at_least(1), default=20, help="timed steps after 3 warm-up ones, in "
                        "rounds of 5 back to back (rounded up; the median round)")
    parser.add_argument("--cpu-devices", type=at_least(1), default=1, help="split a CPU host into this many devices")
    parser.add_argument("--peers", nargs="*", default=["transformers"], choices=("transformers", "torch-compile"),
                        help="PyTorch runs to compare with")
    parser.add_argument("--plain-loss", action="store_true", help="ours with the whole-logits loss (an ablation)")
    model_variants.add_flags(parser)
    parser.add_argument("--cli-steps", type=at_least(0), default=0, help="also run the train CLI this many steps")
    parser.add_argument("--profile", action="store_true", help="print the device time of ours by kernel (with "
                        "--peers-only: the peers', from PyTorch's profiler)")
    parser.add_argument("--peers-only", action="store_true", help="time only the --peers, not ours: JAX's profiler "
                        "and PyTorch's both take the GPU's CUPTI, so each --profile runs in its own process")
    args = parser.parse_args()
    if args.peers_only and not args.peers:
        parser.error("--peers-only needs --peers")
    model_variants.check_flags(parser, args)
    return args


args = parse_args()
# Grow JAX's GPU memory as needed instead of taking 75% up front: the PyTorch peers share the card.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
from gpt2_jax import accelerator  # noqa: E402

accelerator.set_xla_flags()  # what the train CLI sets, before JAX starts
import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", args.cpu_devices)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from gpt2_jax import GPT2, GPT2Config, sharding, step as steps  # noqa: E402
from gpt2_jax.flops import peak_flops_per_device, train_flops_per_token  # noqa: E402
from gpt2_jax.optim import make_optimizer  # noqa: E402
from gpt2_jax.train_config import default_config  # noqa: E402


def seconds_per_step(step, wait, n_steps, warmup=3, per_round=5):
    """Seconds per step, as a training loop runs them: `step()` launches one and returns its loss without
    waiting, `wait(loss)` waits for it. After `warmup` steps, rounds of `per_round` steps back to back with
    one wait at the end of each (both the train CLI and nanoGPT's loop wait only when they log): the median
    of ceil(n_steps / per_round) rounds."""
    for _ in range(warmup):
        wait(step())
    times = []
    for _ in range(-(-n_steps // per_round)):
        start = time.perf_counter()
        for _ in range(per_round):
            loss = step()
        wait(loss)
        times.append((time.perf_counter() - start) / per_round)
    return statistics.median(times)


def measured_matmul_flops(dtype):
    a = jnp.asarray(np.random.randn(2048, 2048), dtype)
    matmul = jax.jit(lambda a: a @ a)
    matmul(a).block_until_ready()
    start = time.perf_counter()
    for _ in range(10):
        out = matmul(a)
    out.block_until_ready()
    return 2 * 2048**3 * 10 / (time.perf_counter() - start)


def plain_mean_loss(model, params, windows_BxL):
    logits = model.apply({"params": params}, windows_BxL[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, windows_BxL[:, 1:]).mean()


def fused_norm_error() -> float:
    """The fused add + LayerNorm kernel against XLA's ops on this device (the kernel the GPU compiles, which
    the tests on CPU run interpreted): the largest relative error of the values and the four gradients. Rows
    not a multiple of the kernel's 64 and columns not a power of two: both masks run."""
    from gpt2_jax.layer_norm import AddLayerNorm

    keys, shape = jax.random.split(jax.random.key(0), 5), (5, 999, 768)  # 4,995 rows: the last program's masked
    x, weights = 2 * jax.random.normal(keys[0], shape) + 0.5, jax.random.normal(keys[1], shape)
    delta = jax.random.normal(keys[2], shape)
    params = {"scale": 1 + 0.1 * jax.random.normal(keys[3], (768,)), "bias": 0.1 * jax.random.normal(keys[4], (768,))}

    def values_and_gradients(fused):
        def loss(params, x, delta):
            x_new, y = AddLayerNorm(1e-5, jnp.float32, fused).apply({"params": params}, x, delta)
            return jnp.sum(jnp.sin(y) * weights) + jnp.sum(x_new * weights[::-1]), (x_new, y)
        return jax.jit(jax.value_and_grad(loss, (0, 1, 2), has_aux=True))(params, x, delta)

    fused, plain = (jax.tree.leaves(values_and_gradients(f)) for f in (True, False))
    return max(float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b))) for a, b in zip(fused, plain))


def ours(shape, batch, dtype, n_steps, model_options, profile=False):
    """(seconds per step, peak device bytes or None); model_options: GPT2's variant (its kernels included)."""
    n_layer, n_head, n_embd, block, _, vocab = shape
    c = default_config()
    c.learning_rate, c.warmup_steps, c.max_steps = 1e-3, 10, 1000
    model = GPT2(GPT2Config(vocab_size=vocab, n_positions=block, n_embd=n_embd, n_layer=n_layer, n_head=n_head),
                 dtype=jnp.dtype(dtype), vocab_pad_multiple=64 if vocab > 1000 else 1, **model_options)
    if args.plain_loss:
        steps.mean_loss = plain_mean_loss
    optimizer, mesh = make_optimizer(c), sharding.make_mesh(1)
    init = functools.partial(steps.init_train_state, model, optimizer)
    state_sharding = sharding.tree_shardings(mesh, jax.eval_shape(init, jax.random.key(0)))
    windows_sharding = sharding.batch_sharding(mesh, leading_dims=1)
    state = [jax.jit(init, out_shardings=state_sharding)(jax.random.key(0))]
    compiled = jax.jit(functools.partial(steps.train_step, model, optimizer), donate_argnums=0,
                       in_shardings=(state_sharding, windows_sharding), out_shardings=(state_sharding, None))
    windows = jax.device_put(np.random.randint(0, vocab, (1, batch, block + 1)).astype(np.int32), windows_sharding)

    def step():
        state[0], metrics = compiled(state[0], windows)
        return metrics["loss"]

    seconds = seconds_per_step(step, jax.block_until_ready, n_steps)
    if profile:
        print_profile(step)
    memory = jax.devices()[0].memory_stats() or {}
    return seconds, memory.get("peak_bytes_in_use")


# Which library or compiler wrote a GPU kernel, from its name (the first match; "other" if none: memcpy, memset,
# PyTorch's eager kernels)
KERNEL_KINDS = (("fused add+LayerNorm (Pallas)", r"add_layer_norm"),
                ("attention (cuDNN, flash)", r"sdpa|fmha|flash|cudnn"),
                ("matmul (cuBLAS, CUTLASS, Triton's)", r"gemm|xmma|nvjet|cutlass|cublas"),
                ("optimizer (PyTorch's fused AdamW, foreach norms)", r"multi_tensor|adam|foreach"),
                ("Triton fusions (inductor's)", r"^triton_"),
                ("XLA fusions; copies, reductions", r"fusion|^loop_|^input_|^wrapped_|reduce|transpose|concatenate|"
                                                    r"slice|copy"))


def print_profile(step, n_steps=3):
    """Device time by kernel over a few steps (jax's profiler, read back with jax.profiler.ProfileData)."""
    from jax.profiler import ProfileData

    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir):
            start = time.perf_counter()
            for _ in range(n_steps):
                loss = step()
            jax.block_until_ready(loss)
            wall = time.perf_counter() - start
        trace = ProfileData.from_file(str(next(Path(trace_dir).rglob("*.xplane.pb"))))
    for plane in trace.planes:
        if not plane.name.startswith("/device:"):
            continue
        for line in plane.lines:
            totals = {}
            for event in line.events:
                totals[event.name] = totals.get(event.name, 0.0) + event.duration_ns
            if totals and sum(totals.values()) / 1e9 >= 0.05 * wall:
                print_kernel_times(f"{plane.name} / {line.name}", totals, wall, n_steps)


def print_torch_profile(who, step, wait, device, n_steps=3):
    """A PyTorch peer's time by kernel over a few steps (PyTorch's profiler): on a GPU, each kernel's device time;
    on a CPU, each operator's own time (its children's excluded)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])) as trace:
        start = time.perf_counter()
        for _ in range(n_steps):
            loss = step()
        wait(loss)
        wall = time.perf_counter() - start
    totals = {}
    if device == "cuda":
        for event in trace.events():
            if event.device_type == DeviceType.CUDA:
                totals[event.name] = totals.get(event.name, 0.0) + event.time_range.elapsed_us() * 1e3
    else:
        totals = {row.key: row.self_cpu_time_total * 1e3 for row in trace.key_averages()}
    print_kernel_times(f"{who} / {device}", totals, wall, n_steps, by_kind=device == "cuda")


def print_kernel_times(who, totals_ns, wall, n_steps, by_kind=True):
    """Prints the busy time per step, the top kernels and (by_kind) the time by KERNEL_KINDS (totals_ns: {name: ns})."""
    busy = sum(totals_ns.values()) / 1e9
    print(f"# profile {who}: {busy / n_steps * 1e3:.1f} ms busy per step of {wall / n_steps * 1e3:.1f} ms wall; "
          f"top kernels (ms per step, share):")
    for name, ns in sorted(totals_ns.items(), key=lambda kv: -kv[1])[:25]:
        print(f"#   {ns / 1e6 / n_steps:8.2f}  {ns / 1e9 / busy:6.1%}  {name[:110]}")
    if by_kind:
        kinds = {}
        for name, ns in totals_ns.items():
            kind = next((kind for kind, pattern in KERNEL_KINDS if re.search(pattern, name, re.I)), "other")
            kinds[kind] = kinds.get(kind, 0.0) + ns / 1e6 / n_steps
        print("# profile by kind (ms per step, from the kernels' names): " +
              ", ".join(f"{kind} {ms:.1f}" for kind, ms in sorted(kinds.items(), key=lambda kv: -kv[1])))
    sys.stdout.flush()


def transformers_step(shape, batch, dtype, device):
    import torch
    import transformers

    n_layer, n_head, n_embd, block, _, vocab = shape
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=vocab, n_positions=block, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=vocab - 1, eos_token_id=vocab - 1)).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    windows = torch.randint(0, vocab, (batch, block + 1), device=device)

    def loss():
        logits = model(windows[:, :-1]).logits
        return torch.nn.functional.cross_entropy(logits.float().reshape(-1, vocab), windows[:, 1:].reshape(-1))

    return torch_step(loss, model, optimizer, dtype, device)


def torch_step(loss_fn, model, optimizer, dtype, device):
    """One PyTorch optimizer step as both peers take it: autocast forward, backward, clip 1.0, AdamW."""
    import torch

    def step():
        with torch.autocast(device, dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
            loss = loss_fn()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def nanogpt_step(shape, batch, dtype, device):
    """nanoGPT's model.py and train.py step, compactly: the strongest common PyTorch GPT-2 recipe."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    n_layer, n_head, n_embd, block, _, vocab = shape
    padded_vocab = -(-vocab // 64) * 64
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1, self.ln_2 = nn.LayerNorm(n_embd), nn.LayerNorm(n_embd)
            self.c_attn, self.attn_proj = nn.Linear(n_embd, 3 * n_embd), nn.Linear(n_embd, n_embd)
            self.c_fc, self.mlp_proj = nn.Linear(n_embd, 4 * n_embd), nn.Linear(4 * n_embd, n_embd)

        def forward(self, x):
            B, T, C = x.shape
            q, k, v = (t.view(B, T, n_head, C // n_head).transpose(1, 2)
                       for t in self.c_attn(self.ln_1(x)).split(n_embd, dim=2))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).contiguous().view(B, T, C)
            x = x + self.attn_proj(y)
            return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte, self.wpe = nn.Embedding(padded_vocab, n_embd), nn.Embedding(block, n_embd)
            self.h, self.ln_f = nn.ModuleList([Block() for _ in range(n_layer)]), nn.LayerNorm(n_embd)
            self.lm_head = nn.Linear(n_embd, padded_vocab, bias=False)
            self.lm_head.weight = self.wte.weight

        def forward(self, idx, targets):
            x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))
            for layer in self.h:
                x = layer(x)
            logits = self.lm_head(self.ln_f(x))
            return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))

    model = GPT().to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=6e-4, betas=(0.9, 0.95), eps=1e-8, fused=device == "cuda")
    model = torch.compile(model)
    windows = torch.randint(0, vocab, (batch, block + 1), device=device)
    inputs, targets = windows[:, :-1].contiguous(), windows[:, 1:].contiguous()  # as nanoGPT's get_batch makes them
    return torch_step(lambda: model(inputs, targets), model, optimizer, dtype, device)


def main():
    torch = __import__("torch") if args.peers else None  # only the PyTorch peers need it
    known_peak = peak_flops_per_device()
    peak = (known_peak or measured_matmul_flops(jnp.dtype(args.dtype))) * (jax.device_count() if known_peak else 1)
    device = "cuda" if torch and torch.cuda.is_available() and jax.devices()[0].platform == "gpu" else "cpu"
    peers_on = f"torch {torch.__version__} on {device}: {torch.get_num_threads()} threads; " if torch else ""
    print(f"# {args.dtype}; jax {jax.__version__}: {jax.device_count()} {jax.devices()[0].device_kind} device(s); "
          f"{peers_on}peak {peak / 1e12:.2f} TFLOP/s "
          f"({'datasheet' if known_peak else 'measured 2048^3 matmul, jax'}); XLA_FLAGS={os.environ['XLA_FLAGS']!r}")
    peers = args.peers
    model_options = model_variants.model_options(args, args.dtype)  # first: it may retile the kernel checked next
    if model_options["fused_norm"] and not args.peers_only:
        print(f"# fused add + LayerNorm against XLA's ops here, fp32 [5, 999, 768]: largest relative error "
              f"{fused_norm_error():.1e} (values and gradients)", flush=True)
    rows = []
    for name in args.shapes:
        shape = SHAPES[name]
        n_layer, n_head, n_embd, block, default_batch, vocab = shape
        flops = train_flops_per_token(GPT2Config(vocab_size=vocab, n_positions=block, n_embd=n_embd,
                                                 n_layer=n_layer, n_head=n_head))
        batches = args.batch_sizes or [default_batch]
        peer_seconds = {}  # the peers first: PyTorch gives its cached GPU memory back, JAX keeps what it grew to
        for batch in batches:
            for peer in peers:
                peer_step = {"transformers": transformers_step, "torch-compile": nanogpt_step}[peer](
                    shape, batch, args.dtype, device)
                peer_seconds[batch, peer] = seconds_per_step(peer_step, lambda loss: loss.item(), args.steps)
                print(f"# {peer} {name} B={batch}: {batch * block / peer_seconds[batch, peer]:,.0f} tok/s", flush=True)
                if args.profile and args.peers_only:
                    print_torch_profile(f"{peer} {name} B={batch}", peer_step, lambda loss: loss.item(), device)
                del peer_step
                if device == "cuda":
                    torch.cuda.empty_cache()
        for batch in [] if args.peers_only else batches:
            tokens = batch * block
            seconds, memory = ours(shape, batch, args.dtype, args.steps, model_options, args.profile)
            variant = model_variants.describe(model_options) + (", plain loss" if args.plain_loss else "") + (
                f", tiles {','.join(map(str, args.fused_norm_tiles))}" if args.fused_norm_tiles else "") + (
                ", autodiff GELU" if args.autodiff_gelu else "")
            row = [f"{name} B={batch} ({variant})", f"{tokens:,}",
                   f"{tokens / seconds:,.0f}", f"{tokens / seconds * flops / peak:.1%}",
                   f"{memory / 2**30:.1f}" if memory else "-"]
            for peer in peers:
                theirs = peer_seconds[batch, peer]
                row += [f"{tokens / theirs:,.0f}", f"{tokens / theirs * flops / peak:.1%}", f"{theirs / seconds:.2f}x"]
            rows.append(row)
            print("| " + " | ".join(row) + " |", flush=True)
    header = ["shape", "tokens/step", "gpt2_jax tok/s", "MFU", "peak GiB"]
    for peer in peers:
        header += [f"{peer} tok/s", "MFU", "ratio"]
    if rows:
        print("\n| " + " | ".join(header) + " |\n|" + " --- |" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    if args.cli_steps:
        batch = max(args.batch_sizes or [SHAPES["gpt2-124m-1024"][4]])
        overrides = model_variants.config_overrides(args)
        logged, lines = train_cli_run(args.cli_steps, [f"--config.batch_size={batch}", *overrides])
        print(f"\n# python -m gpt2_jax.train --config=configs/gpt2_124m.py --config.batch_size={batch}"
              f"{''.join(' ' + flag for flag in overrides)}, {args.cli_steps} steps of 2^19 tokens on random data:")
        print("\n".join(f"#   {line}" for line in (lines if isinstance(lines, list) else [lines])))
        if logged and logged["tokens_per_sec"]:
            memory = logged["peak_memory_gib"]
            print(f"# its metrics.jsonl: median tokens_per_sec {logged['tokens_per_sec']:,.0f}, mfu {logged['mfu']:.1%}"
                  + (f", peak memory {memory:.1f} GiB" if memory else ""))


if __name__ == "__main__":
    main()
