"""The peer for time-to-quality: transformers' PyTorch GPT-2 trained with a configs/*.py recipe.

A flat, eager PyTorch loop (nanoGPT's CPU recipe runs uncompiled too) over the same prepared
shards, windows and validation batches as `python -m gpt2_jax.train`: GPT2LMHeadModel with
dropout off, AdamW with decay on matrices only, global-norm clipping, and optax's
warmup + cosine schedule written out. Prints `step N | val loss X` lines in gpt2_jax's
format, so scripts/bench_time_to_quality.py can time both processes the same way.

    python scripts/torch_reference_train.py --config configs/shakespeare_byte.py
"""

import argparse
import importlib.util
import math
import time

import numpy as np
import torch
import transformers

from gpt2_jax.data import WindowSource, eval_batches


def load_config(path):
    spec = importlib.util.spec_from_file_location("config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def learning_rate(c, step):
    """optax.warmup_cosine_decay_schedule(0, lr, warmup, max_steps, lr * min_lr_ratio) at `step`."""
    if step < c.warmup_steps:
        return c.learning_rate * step / c.warmup_steps
    progress = min((step - c.warmup_steps) / (c.max_steps - c.warmup_steps), 1.0)
    end = c.learning_rate * c.min_lr_ratio
    return end + (c.learning_rate - end) * 0.5 * (1 + math.cos(math.pi * progress))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/shakespeare_byte.py")
    parser.add_argument("--max-steps", type=int, default=0, help="stop early (0: the config's max_steps)")
    args = parser.parse_args()
    c = load_config(args.config)
    train, val = WindowSource(c.data_dir, "train", c.block_size), WindowSource(c.data_dir, "val", c.block_size)
    torch.manual_seed(c.seed)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=train.meta["vocab_size"], n_positions=c.block_size, n_embd=c.n_embd, n_layer=c.n_layer,
        n_head=c.n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=train.meta["eot_token"], eos_token_id=train.meta["eot_token"],
    ))
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": c.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=c.learning_rate, betas=(c.b1, c.b2), eps=c.eps)
    batch, max_steps = c.tokens_per_step // c.block_size, args.max_steps or c.max_steps
    rng = np.random.default_rng(c.seed)  # shuffled windows, a new permutation each epoch
    order = np.concatenate([rng.permutation(len(train)) for _ in range(-(-max_steps * batch // len(train)))])
    val_batches = list(eval_batches(val, c.batch_size, c.eval_batches))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params")

    def val_loss():
        model.eval()
        total, count = 0.0, 0.0
        with torch.no_grad():
            for windows, weights in val_batches:
                windows, weights = torch.from_numpy(windows).long(), torch.from_numpy(weights)
                logits = model(windows[:, :-1]).logits
                losses = torch.nn.functional.cross_entropy(logits.transpose(1, 2), windows[:, 1:], reduction="none")
                total, count = total + (losses * weights[:, None]).sum().item(), count + weights.sum().item() * losses.shape[1]
        model.train()
        return total / count

    start = time.perf_counter()
    for step in range(1, max_steps + 1):
        indices = order[(step - 1) * batch : step * batch]
        windows = torch.from_numpy(np.stack([train[int(i)] for i in indices])).long()
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(c, step - 1)
        logits = model(windows[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1))
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), c.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % c.log_every == 0 or step == max_steps:
            rate = step * c.tokens_per_step / (time.perf_counter() - start)
            print(f"step {step:6d} | loss {loss.item():.4f} | grad norm {grad_norm.item():.3f} | {rate:,.0f} tok/s", flush=True)
        if c.eval_every and (step % c.eval_every == 0 or step == max_steps):
            print(f"step {step:6d} | val loss {val_loss():.4f}", flush=True)


if __name__ == "__main__":
    main()
