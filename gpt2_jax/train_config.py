"""A training run's settings: the defaults, their validation, and the model they describe.

Files in configs/ start from `default_config()` and change what they need; the command line
overrides any key with `--config.KEY=VALUE` (typed; ml_collections rejects unknown keys).
The defaults are GPT-2 124M as build-nanogpt trains it.
"""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections

from gpt2_jax.accelerator import ATTENTION_IMPLS, model_kernels
from gpt2_jax.config import ConfigError, GPT2Config
from gpt2_jax.model import GPT2
from gpt2_jax.optim import optimizer_checks
from gpt2_jax.sharding import fsdp_problem

DTYPES = ("float32", "bfloat16")

# (key, default, meaning): the defaults, and what `python -m gpt2_jax.train --help` lists. A default of None is
# a bool that the platform decides unless set (accelerator.model_kernels).
FIELDS = (
    ("data_dir", "", "token shards from python -m gpt2_jax.prepare; their tokenizer sets the vocabulary"),
    ("init_from", "", "start from this model (hub name, HF dir, params dir or workdir; its config.json sets "
                      "the shape) instead of GPT-2's init: fine-tuning"),
    ("n_layer", 12, "transformer blocks (GPT-2 124M unless init_from gives the shape)"),
    ("n_head", 12, "attention heads per block"),
    ("n_embd", 768, "width of the residual stream"),
    ("block_size", 1024, "context in tokens (the model's n_positions)"),
    ("vocab_pad_multiple", 64, "round the embedding rows up to a multiple (50257 -> 50304): faster, same results"),
    ("dtype", "bfloat16", f"compute dtype, one of {DTYPES}; params and optimizer state stay float32"),
    ("attention_impl", "", f"one of {ATTENTION_IMPLS}; '': the fastest exact kernel here (accelerator.py)"),
    ("remat", False, "recompute activations in the backward pass to save memory"),
    ("residual_dtype", "float32", f"the residual stream's dtype, one of {DTYPES}: bfloat16 halves its memory traffic"),
    ("split_qkv", None, "queries, keys and values as three matmuls, not one split by copying; None: with cuDNN "
                        "attention, where it is faster (docs/benchmarks.md)"),
    ("fused_norm", None, "each residual add and LayerNorm as one Pallas kernel; None: on NVIDIA GPUs in bfloat16, "
                         "where it is faster (docs/benchmarks.md)"),
    ("batch_size", 16, "windows per micro-batch, all devices together"),
    ("tokens_per_step", 524_288, "tokens per optimizer step (2**19, GPT-3 small's); micro-batches accumulate to it"),
    ("learning_rate", 6e-4, "peak learning rate, reached after warmup_steps"),
    ("min_lr_ratio", 0.1, "cosine decay to learning_rate * this at max_steps (1.0: constant)"),
    ("warmup_steps", 715, "linear warmup steps"),
    ("max_steps", 19_073, "optimizer steps (19,073 x 2**19 tokens: one pass over FineWeb-Edu 10B)"),
    ("b1", 0.9, "AdamW beta1"),
    ("b2", 0.95, "AdamW beta2"),
    ("eps", 1e-8, "AdamW epsilon"),
    ("weight_decay", 0.1, "AdamW weight decay, on matrices only"),
    ("grad_clip", 1.0, "clip the global gradient norm to this (inf: no clipping)"),
    ("seed", 0, "init and data order"),
    ("log_every", 10, "steps between logged rows"),
    ("eval_every", 250, "steps between evaluations (0: never)"),
    ("eval_batches", 20, "val batches of batch_size windows per evaluation (0: the whole split)"),
    ("checkpoint_every", 1000, "steps between checkpoints"),
    ("keep_checkpoints", 3, "checkpoints kept"),
    ("cpu_devices", 0, "experimental: split a CPU host into this many devices (0: one); XLA:CPU's collectives "
                       "can wait forever under load and abort the run"),
    ("fsdp", 1, "devices that split params and optimizer state (0: all); the rest are data parallel"),
    ("distributed", False, "call jax.distributed.initialize() (TPU pods, multi-node GPU)"),
    ("peak_flops", 0.0, "per device, for MFU (0: look the device up)"),
    ("hellaswag", "", "path to hellaswag_val.jsonl, or 'official' (downloads once), scored at each evaluation"),
    ("hellaswag_limit", 0, "HellaSwag examples per evaluation (0: all)"),
    ("sample_prompt", "Hello, I'm a language model,", "prompt sampled at each evaluation"),
    ("num_samples", 4, "samples at each evaluation (0: none)"),
    ("sample_tokens", 32, "tokens per sample"),
)


def default_config() -> ml_collections.ConfigDict:
    """GPT-2 124M as build-nanogpt trains it (FIELDS)."""
    return ml_collections.ConfigDict({key: ml_collections.FieldReference(None, field_type=bool) if default is None
                                      else default for key, default, _ in FIELDS})


def describe() -> str:
    """The config keys with their defaults and meanings, for --help."""
    width = max(len(key) for key, _, _ in FIELDS)
    return "\n".join(f"  --config.{key:<{width}}  {default!r:<32} {meaning}" for key, default, meaning in FIELDS)


def accumulation_steps(c: ml_collections.ConfigDict) -> int:
    return c.tokens_per_step // (c.batch_size * c.block_size)


def fits_setting(value, kind: type) -> bool:
    """`value` can be a setting of type `kind`: an int stands for a float; a bool is no number; NoneType (a
    default of None) takes a bool too."""
    if kind is type(None):
        return value is None or isinstance(value, bool)
    return isinstance(value, (int, float) if kind is float else kind) and isinstance(value, bool) == (kind is bool)


def validate(c: ml_collections.ConfigDict, n_devices: int, n_processes: int, platform: str = "") -> None:
    """Raise ConfigError naming the first key that cannot work, and what would (`platform`: jax's backend)."""
    for key, default, _ in FIELDS:  # a config file may set None (ConfigDict allows it): a traceback in a check below
        if not fits_setting(c[key], type(default)):
            name = type(default).__name__ if default is not None else "bool or None"
            raise ConfigError(f"{key}={c[key]!r} must be {'an' if name == 'int' else 'a'} {name}, as its default "
                              f"{default!r} is")
    for key in ("batch_size", "block_size", "tokens_per_step", "max_steps", "n_layer", "n_head", "n_embd",
                "vocab_pad_multiple"):
        if c[key] < 1:
            raise ConfigError(f"{key}={c[key]} must be at least 1")
    for key in ("max_steps", "warmup_steps", "log_every", "eval_every", "checkpoint_every"):
        if c[key] >= 2**31:  # optax counts steps in int32; a count past it wraps, and the clock's ETA overflows
            raise ConfigError(f"{key}={c[key]} must be below 2**31 = {2**31:,}: steps are counted in int32 (optax's)")
    micro_tokens = c.batch_size * c.block_size
    checks = optimizer_checks(c) + [
        (0 <= c.seed < 2**32, f"seed={c.seed} must be in [0, 2**32)"),
        (c.attention_impl != "cudnn" or platform in ("", "gpu", "cuda"),
         f"attention_impl='cudnn' needs an NVIDIA GPU, not {platform}; use '' (the platform's choice) or 'chunked'"),
        (not c.fused_norm or platform in ("", "gpu", "cuda"),
         f"fused_norm=True needs an NVIDIA GPU (its Triton kernel), not {platform}; leave it None or False"),
        (c.data_dir, "data_dir is not set; pass --config.data_dir=DIR (from python -m gpt2_jax.prepare)"),
        (c.dtype in DTYPES, f"dtype={c.dtype!r}; choose one of {DTYPES}"),
        (c.residual_dtype in DTYPES, f"residual_dtype={c.residual_dtype!r}; choose one of {DTYPES}"),
        (c.attention_impl in ATTENTION_IMPLS, f"attention_impl={c.attention_impl!r}; choose one of {ATTENTION_IMPLS}"),
        (c.tokens_per_step % micro_tokens == 0 and c.tokens_per_step >= micro_tokens,
         f"tokens_per_step={c.tokens_per_step} is not a multiple of batch_size * block_size = {micro_tokens}"),
        (c.batch_size % n_devices == 0, f"batch_size={c.batch_size} does not split over {n_devices} devices"),
        (c.batch_size % n_processes == 0, f"batch_size={c.batch_size} does not split over {n_processes} processes"),
        (fsdp_problem(c.fsdp, n_devices) is None, fsdp_problem(c.fsdp, n_devices)),
        (min(c.log_every, c.checkpoint_every, c.keep_checkpoints) >= 1,
         "log_every, checkpoint_every and keep_checkpoints must be >= 1"),
        (c.eval_every >= 0 and c.eval_batches >= 0, "eval_every and eval_batches must be >= 0 (0: never / all)"),
        (all(c[key] >= 0 for key in ("num_samples", "sample_tokens", "hellaswag_limit", "cpu_devices", "peak_flops")),
         "num_samples, sample_tokens, hellaswag_limit, cpu_devices and peak_flops must be >= 0"),
        (c.sample_prompt or not c.num_samples, "sample_prompt is empty; give one, or set num_samples=0"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def model_config(c: ml_collections.ConfigDict, vocab_size: int, eot_token: int) -> GPT2Config:
    """The GPT2Config (HF schema) of the model this run trains, for the data's tokenizer."""
    return GPT2Config(vocab_size=vocab_size, n_positions=c.block_size, n_embd=c.n_embd, n_layer=c.n_layer,
                      n_head=c.n_head, bos_token_id=eot_token, eos_token_id=eot_token)


def make_model(c: ml_collections.ConfigDict, config: GPT2Config, device=None) -> tuple[GPT2, dict]:
    """The GPT2 of `config` that this run trains (its dtypes, padding, remat) with the kernels that `device` (None:
    the default one) runs fastest where the run leaves them to the platform; and those kernels, for the banner."""
    kernels = model_kernels(c.attention_impl, c.split_qkv, c.fused_norm, c.dtype, device)
    return GPT2(config, dtype=jnp.dtype(c.dtype), vocab_pad_multiple=c.vocab_pad_multiple, remat=c.remat,
                residual_dtype=jnp.dtype(c.residual_dtype), **kernels), kernels
