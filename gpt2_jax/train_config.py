"""A training run's settings: the defaults, their validation, and the model they describe.

Files in configs/ start from `default_config()` and change what they need; the command line
overrides any key with `--config.KEY=VALUE` (typed; ml_collections rejects unknown keys).
The defaults are GPT-2 124M as build-nanogpt trains it.
"""

from __future__ import annotations

import math

import ml_collections

from gpt2_jax.accelerator import ATTENTION_IMPLS
from gpt2_jax.config import ConfigError, GPT2Config

DTYPES = ("float32", "bfloat16")


def default_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.data_dir = ""  # written by python -m gpt2_jax.prepare; its tokenizer sets the vocabulary
    # The model (GPT-2 124M). n_positions is block_size.
    c.n_layer, c.n_head, c.n_embd, c.block_size = 12, 12, 768, 1024
    c.vocab_pad_multiple = 64  # 50257 -> 50304 embedding rows: faster matmuls, same results
    c.dtype = "bfloat16"  # compute dtype; params and optimizer state stay float32
    c.attention_impl = ""  # "": the fastest exact kernel here (accelerator.py); or "xla", "cudnn", "pallas"
    c.remat = False  # recompute activations in the backward pass to save memory
    # Batch: micro-batches of batch_size windows (all devices together), accumulated to tokens_per_step.
    c.batch_size = 16
    c.tokens_per_step = 524_288  # 2**19, GPT-3 small's 0.5M
    # AdamW with warmup and cosine decay (optim.py).
    c.learning_rate, c.min_lr_ratio = 6e-4, 0.1
    c.warmup_steps, c.max_steps = 715, 19_073  # 19,073 steps of 2**19 tokens: one pass over 10B
    c.b1, c.b2, c.eps = 0.9, 0.95, 1e-8
    c.weight_decay, c.grad_clip = 0.1, 1.0
    # The loop.
    c.seed = 0
    c.log_every = 10
    c.eval_every = 250  # 0: never
    c.eval_batches = 20  # val batches of batch_size windows per evaluation; 0: the whole split
    c.checkpoint_every = 1000
    c.keep_checkpoints = 3
    # Devices.
    # Experimental: split a CPU host into this many devices (0: one). Faster for tiny models, but XLA:CPU
    # runs every device's collectives on one shared thread pool, and under load (another busy process)
    # an all-reduce can wait forever and abort the run; keep 0 for anything that must finish.
    c.cpu_devices = 0
    c.fsdp = 1  # devices that split params and optimizer state (0: all); the rest are data parallel
    c.distributed = False  # call jax.distributed.initialize() (TPU pods, multi-node GPU)
    c.peak_flops = 0.0  # per device, for MFU; 0: look the device up
    # Extras at each evaluation (evaluate.py).
    c.hellaswag = ""  # path to hellaswag_val.jsonl; "": skip
    c.hellaswag_limit = 0  # examples per evaluation; 0: all
    c.sample_prompt = "Hello, I'm a language model,"
    c.num_samples, c.sample_tokens = 4, 32  # 0 samples: skip
    return c


def accumulation_steps(c: ml_collections.ConfigDict) -> int:
    return c.tokens_per_step // (c.batch_size * c.block_size)


def validate(c: ml_collections.ConfigDict, n_devices: int, n_processes: int, platform: str = "") -> None:
    """Raise ConfigError naming the first key that cannot work, and what would (`platform`: jax's backend)."""
    for key in ("batch_size", "block_size", "tokens_per_step", "max_steps", "n_layer", "n_head", "n_embd"):
        if c[key] < 1:
            raise ConfigError(f"{key}={c[key]} must be at least 1")
    micro_tokens = c.batch_size * c.block_size
    checks = [
        (0 < c.learning_rate < math.inf, f"learning_rate={c.learning_rate} must be a positive number"),
        (c.attention_impl != "cudnn" or platform in ("", "gpu", "cuda"),
         f"attention_impl='cudnn' needs an NVIDIA GPU, not {platform}; use '' (jax picks) or 'xla'"),
        (c.data_dir, "data_dir is not set; pass --config.data_dir=DIR (from python -m gpt2_jax.prepare)"),
        (c.dtype in DTYPES, f"dtype={c.dtype!r}; choose one of {DTYPES}"),
        (c.attention_impl in ATTENTION_IMPLS, f"attention_impl={c.attention_impl!r}; choose one of {ATTENTION_IMPLS}"),
        (c.tokens_per_step % micro_tokens == 0 and c.tokens_per_step >= micro_tokens,
         f"tokens_per_step={c.tokens_per_step} is not a multiple of batch_size * block_size = {micro_tokens}"),
        (c.batch_size % n_devices == 0, f"batch_size={c.batch_size} does not split over {n_devices} devices"),
        (c.batch_size % n_processes == 0, f"batch_size={c.batch_size} does not split over {n_processes} processes"),
        (c.fsdp >= 0 and n_devices % (c.fsdp or n_devices) == 0,
         f"fsdp={c.fsdp} does not divide the {n_devices} devices"),
        (0 <= c.warmup_steps < c.max_steps, f"warmup_steps={c.warmup_steps} must be below max_steps={c.max_steps}"),
        (0 < c.min_lr_ratio <= 1, f"min_lr_ratio={c.min_lr_ratio} must be in (0, 1]"),
        (min(c.log_every, c.checkpoint_every, c.keep_checkpoints) >= 1,
         "log_every, checkpoint_every and keep_checkpoints must be >= 1"),
        (c.eval_every >= 0 and c.eval_batches >= 0, "eval_every and eval_batches must be >= 0 (0: never / all)"),
        (min(c.num_samples, c.sample_tokens, c.hellaswag_limit, c.cpu_devices, c.peak_flops) >= 0,
         "num_samples, sample_tokens, hellaswag_limit, cpu_devices and peak_flops must be >= 0"),
        (c.sample_prompt or not c.num_samples, "sample_prompt is empty; give one, or set num_samples=0"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def model_config(c: ml_collections.ConfigDict, vocab_size: int, eot_token: int) -> GPT2Config:
    """The GPT2Config (HF schema) of the model this run trains, for the data's tokenizer."""
    return GPT2Config(
        vocab_size=vocab_size, n_positions=c.block_size, n_embd=c.n_embd, n_layer=c.n_layer, n_head=c.n_head,
        bos_token_id=eot_token, eos_token_id=eot_token,
    )
