"""Training speed: gpt2_jax's train step against transformers' PyTorch GPT-2 on the same shapes.

For each shape, a whole optimizer step (forward, backward, global-norm clipping, AdamW) on
random windows, timed after warm-up steps, both sides on this machine in this run: tokens/s,
MFU and the ratio. gpt2_jax runs its compiled, sharded step over every device (on a CPU
host: --cpu-devices, one per core); PyTorch runs eager, as nanoGPT's CPU recipe does, with
its default threads (or on CUDA with bf16 autocast when --dtype bfloat16 and a GPU is there).
MFU's peak is the device's datasheet bf16 rate where metrics.PEAK_FLOPS knows the device,
else the matmul rate measured here in the compute dtype (then "MFU" is against that).

    python scripts/bench_train.py --cpu-devices 2
    python scripts/bench_train.py --shapes gpt2-124m-1024 --dtype bfloat16   # a GPU
"""

import argparse
import functools
import os
import time

SHAPES = {  # n_layer, n_head, n_embd, block_size, batch (windows per step), vocab
    "quickstart": (4, 4, 128, 64, 12, 257),
    "gpt2-124m-256": (12, 12, 768, 256, 4, 50257),
    "gpt2-124m-1024": (12, 12, 768, 1024, 16, 50257),
}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=["quickstart", "gpt2-124m-256"], choices=list(SHAPES))
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cpu-devices", type=int, default=os.cpu_count())
    return parser.parse_args()


args = parse_args()
import jax  # noqa: E402  (the CPU device count must be set before JAX starts)

jax.config.update("jax_num_cpu_devices", args.cpu_devices)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from gpt2_jax import GPT2, GPT2Config, sharding  # noqa: E402
from gpt2_jax.metrics import peak_flops_per_device, train_flops_per_token  # noqa: E402
from gpt2_jax.optim import make_optimizer  # noqa: E402
from gpt2_jax.step import init_train_state, train_step  # noqa: E402
from gpt2_jax.train_config import default_config  # noqa: E402


def seconds_per_step(step, steps, warmup=3):
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def measured_matmul_flops(dtype):
    a = jnp.asarray(np.random.randn(2048, 2048), dtype)
    matmul = jax.jit(lambda a: a @ a)
    matmul(a).block_until_ready()
    start = time.perf_counter()
    for _ in range(10):
        out = matmul(a)
    out.block_until_ready()
    return 2 * 2048**3 * 10 / (time.perf_counter() - start)


def ours(shape, dtype, steps):
    n_layer, n_head, n_embd, block, batch, vocab = shape
    c = default_config()
    c.learning_rate, c.warmup_steps, c.max_steps = 1e-3, 10, 1000
    model = GPT2(GPT2Config(vocab_size=vocab, n_positions=block, n_embd=n_embd, n_layer=n_layer, n_head=n_head),
                 dtype=jnp.dtype(dtype))
    optimizer, mesh = make_optimizer(c), sharding.make_mesh(1)
    init = functools.partial(init_train_state, model, optimizer)
    state_sharding = sharding.tree_shardings(mesh, jax.eval_shape(init, jax.random.key(0)))
    windows_sharding = sharding.batch_sharding(mesh, leading_dims=1)
    state = [jax.jit(init, out_shardings=state_sharding)(jax.random.key(0))]
    compiled = jax.jit(functools.partial(train_step, model, optimizer), donate_argnums=0,
                       in_shardings=(state_sharding, windows_sharding), out_shardings=(state_sharding, None))
    windows = jax.device_put(np.random.randint(0, vocab, (1, batch, block + 1)).astype(np.int32), windows_sharding)

    def step():
        state[0], metrics = compiled(state[0], windows)
        metrics["loss"].block_until_ready()

    return seconds_per_step(step, steps)


def theirs(shape, dtype, steps):
    n_layer, n_head, n_embd, block, batch, vocab = shape
    device = "cuda" if dtype == "bfloat16" and torch.cuda.is_available() else "cpu"
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=vocab, n_positions=block, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    windows = torch.randint(0, vocab, (batch, block + 1), device=device)

    def step():
        with torch.autocast(device, dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
            logits = model(windows[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, vocab), windows[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()

    return seconds_per_step(step, steps), device


def main():
    known_peak = peak_flops_per_device()
    peak = (known_peak or measured_matmul_flops(jnp.dtype(args.dtype))) * (jax.device_count() if known_peak else 1)
    print(f"# {args.dtype}; jax {jax.__version__}: {jax.device_count()} {jax.devices()[0].device_kind} device(s); "
          f"torch {torch.__version__}: {torch.get_num_threads()} threads; peak {peak / 1e12:.2f} TFLOP/s "
          f"({'datasheet' if known_peak else 'measured 2048^3 matmul, jax'})")
    print("| shape | tokens/step | gpt2_jax tok/s | MFU | transformers tok/s | MFU | ratio |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name in args.shapes:
        shape = SHAPES[name]
        n_layer, n_head, n_embd, block, batch, vocab = shape
        flops = train_flops_per_token(GPT2Config(vocab_size=vocab, n_positions=block, n_embd=n_embd,
                                                 n_layer=n_layer, n_head=n_head))
        tokens = batch * block
        ours_tps = tokens / ours(shape, args.dtype, args.steps)
        theirs_seconds, device = theirs(shape, args.dtype, args.steps)
        theirs_tps = tokens / theirs_seconds
        print(f"| {name} ({device}) | {tokens:,} | {ours_tps:,.0f} | {ours_tps * flops / peak:.1%} | "
              f"{theirs_tps:,.0f} | {theirs_tps * flops / peak:.1%} | {ours_tps / theirs_tps:.2f}x |")


if __name__ == "__main__":
    main()
