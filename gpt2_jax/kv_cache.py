"""The KV cache that sampling reads and extends: one {"k", "v"} dict per layer."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gpt2_jax.config import GPT2Config

# One {"k", "v"} dict of [batch, max_len, n_head, head_dim] arrays per layer.
KVCache = list[dict[str, jax.Array]]


def init_cache(config: GPT2Config, batch_size: int, max_len: int, dtype=jnp.float32) -> KVCache:
    """An empty KV cache for `batch_size` sequences of up to `max_len` tokens."""
    shape = (batch_size, max_len, config.n_head, config.head_dim)
    return [{"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)} for _ in range(config.n_layer)]


def cache_bytes(config: GPT2Config, batch_size: int, max_len: int, dtype=jnp.float32) -> int:
    """The size of `init_cache(config, batch_size, max_len, dtype)`, computed without making it."""
    return 2 * config.n_layer * batch_size * max_len * config.n_embd * jnp.dtype(dtype).itemsize


def cache_length(cache: KVCache) -> int:
    """How many positions `cache` holds (its max_len)."""
    return cache[0]["k"].shape[1]


def positions_held(cache: KVCache, n_positions: int) -> int:
    """How many positions decoding into `cache` may use: its length, at most the model's n_positions (past those no
    position embedding exists, and the NaN keys written there would spoil every row that reads the cache)."""
    return min(cache_length(cache), n_positions)


def check_fits(cache: KVCache, start, T: int, n_positions: int) -> None:
    """ValueError if positions start..start+T-1 do not fit `cache` and the model's n_positions (when start is
    known, not traced)."""
    limit = positions_held(cache, n_positions)
    if not isinstance(start, jax.core.Tracer) and not 0 <= int(start) <= limit - T:
        where = f"the cache's {limit}" if limit == cache_length(cache) else f"the model's {n_positions} positions"
        raise ValueError(f"positions {int(start)}..{int(start) + T - 1} do not fit {where}")
