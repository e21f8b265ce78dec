"""The peer for time-to-quality: transformers' PyTorch GPT-2 trained with a configs/*.py recipe.

A flat, eager PyTorch loop (nanoGPT's CPU recipe runs uncompiled too): GPT2LMHeadModel with
dropout off, AdamW with weight decay on matrices only, global-norm clipping, optax's warmup +
cosine schedule written out. scripts/bench_time_to_quality.py hands it the same initial
weights (an HF directory) and the same windows, in the same order, that `python -m
gpt2_jax.train` will use, so the two runs compute the same thing and only their speed differs.
It prints `step N | val loss X` lines in gpt2_jax's format.

    python scripts/torch_reference_train.py --config configs/shakespeare_byte.py \\
        --init DIR --train-windows train.npy --val-windows val.npz
"""

import argparse
import importlib.util
import math
import time
from pathlib import Path

import numpy as np
import torch
import transformers


def load_config(path):
    spec = importlib.util.spec_from_file_location("config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def learning_rate(c, step):
    """Train step `step`'s rate (from 1): optax.warmup_cosine_decay_schedule(0, lr, warmup, max_steps,
    lr * min_lr_ratio) at `step`, as gpt2_jax.optim reads it."""
    if step < c.warmup_steps:
        return c.learning_rate * step / c.warmup_steps
    progress = min((step - c.warmup_steps) / (c.max_steps - c.warmup_steps), 1.0)
    end = c.learning_rate * c.min_lr_ratio
    return end + (c.learning_rate - end) * 0.5 * (1 + math.cos(math.pi * progress))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/shakespeare_byte.py",
                        help="the recipe (default: configs/shakespeare_byte.py)")
    parser.add_argument("--init", required=True, help="HF directory with the initial weights")
    parser.add_argument("--train-windows", required=True, help=".npy [steps, batch, block_size + 1]")
    parser.add_argument("--val-windows", required=True, help=".npz with windows [n, block_size + 1] and weights [n]")
    args = parser.parse_args()
    for flag, path, what in (("--init", Path(args.init) / "config.json", "an HF directory (config.json + weights)"),
                             ("--config", Path(args.config), "a config file"),
                             ("--train-windows", Path(args.train_windows), "a .npy file"),
                             ("--val-windows", Path(args.val_windows), "a .npz file")):
        if not path.is_file():
            parser.error(f"{flag}: no {path}; expected {what}")
    c = load_config(args.config)
    model = transformers.GPT2LMHeadModel.from_pretrained(args.init, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model.train()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": c.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=c.learning_rate, betas=(c.b1, c.b2), eps=c.eps)
    train_windows = np.load(args.train_windows, mmap_mode="r")
    val = np.load(args.val_windows)
    val_windows, val_weights = torch.from_numpy(val["windows"]).long(), torch.from_numpy(val["weights"])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params", flush=True)

    def val_loss():
        model.eval()
        with torch.no_grad():
            logits = torch.cat([model(w[:, :-1]).logits for w in val_windows.split(c.batch_size)])
        model.train()
        losses = torch.nn.functional.cross_entropy(logits.transpose(1, 2), val_windows[:, 1:], reduction="none")
        return ((losses * val_weights[:, None]).sum() / (val_weights.sum() * losses.shape[1])).item()

    start = time.perf_counter()
    for step in range(1, c.max_steps + 1):
        windows = torch.from_numpy(np.asarray(train_windows[step - 1])).long()
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(c, step)
        logits = model(windows[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1))
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), c.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % c.log_every == 0 or step == c.max_steps:
            rate = step * c.tokens_per_step / (time.perf_counter() - start)
            print(f"step {step:6d} | loss {loss.item():.4f} | grad norm {grad_norm.item():.3f} | tok/s {rate:,.0f}",
                  flush=True)
        if c.eval_every and (step % c.eval_every == 0 or step == c.max_steps):
            print(f"step {step:6d} | val loss {val_loss():.4f}", flush=True)


if __name__ == "__main__":
    main()
