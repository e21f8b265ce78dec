"""The decoding program: the state after a prompt (`start`), and a chunk of decoding steps compiled as one XLA
while loop (`decode_chunk`); sampling.generate drives them, a chunk per call.

Within the context a step feeds one token through the KV cache; past it (prompt + new tokens > n_positions)
there is no cache, from the first step: each step reruns the model on the last n_positions tokens, as nanoGPT
does (learned absolute positions cannot slide a KV cache).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import io_callback

from gpt2_jax.kv_cache import init_cache
from gpt2_jax.model import GPT2
from gpt2_jax.next_token import sample_next


class DecodeState(NamedTuple):
    """Where decoding is: `steps` new tokens made into `tokens_BxL` (the prompt, then the new tokens; 0 where none is
    yet), the KV `cache` (None when windowed: no cache), the logits [B, V] of the next token, the rows that have
    ended, and the rng of the draws to come."""
    steps: jax.Array
    tokens_BxL: jax.Array
    cache: Any
    logits_BxV: jax.Array
    done_B: jax.Array
    rng: jax.Array


@functools.partial(jax.jit, static_argnums=(0, 4))
def start(model, params, prompt_BxT, rng, max_new_tokens) -> DecodeState:
    """The decoding state after the prompt: no steps done, the cache (if any) filled with the prompt."""
    B, T = prompt_BxT.shape
    L = T + max_new_tokens
    # Not-yet-sampled positions hold token 0: a window reads them (causally masked), so they must be real ids.
    tokens_BxL = jnp.concatenate([prompt_BxT, jnp.zeros((B, max_new_tokens), jnp.int32)], axis=1)
    if L > model.config.n_positions:  # windowed: no cache
        logits_BxV, cache = logits_after(model, params, tokens_BxL, None, T - 1)
    else:  # the prompt in one pass fills the cache
        cache = init_cache(model.config, B, L, model.dtype)
        logits_Bx1xV, cache = model.apply({"params": params}, prompt_BxT, cache, 0, last_only=True,
                                          method=GPT2.decode)
        logits_BxV = logits_Bx1xV[:, 0]
    return DecodeState(jnp.int32(0), tokens_BxL, cache, logits_BxV, jnp.zeros(B, bool), rng)


def logits_after(model, params, tokens_BxL, cache, position):
    """The logits [B, V] that predict position + 1, and the cache that has seen `position`."""
    P, L, apply = model.config.n_positions, tokens_BxL.shape[1], functools.partial(model.apply, {"params": params})
    if L > P:  # windowed: the model over the last P tokens, the head at one position (not [B, P, V] logits)
        first = jnp.clip(position + 1 - P, 0, L - P)  # the window's first position
        x_BxPxD = apply(jax.lax.dynamic_slice_in_dim(tokens_BxL, first, P, axis=1), method=GPT2.hidden)
        return apply(jax.lax.dynamic_slice_in_dim(x_BxPxD, position - first, 1, axis=1), method=GPT2.head)[:, 0], cache
    token_Bx1 = jax.lax.dynamic_slice_in_dim(tokens_BxL, position, 1, axis=1)
    logits_Bx1xV, cache = apply(token_Bx1, cache, position, method=GPT2.decode)
    return logits_Bx1xV[:, 0], cache


@functools.partial(jax.jit, static_argnames=("model", "T", "sampling", "on_token"), donate_argnames=("state",))
def decode_chunk(model, params, state: DecodeState, *, stop, T, sampling, on_token) -> DecodeState:
    """Steps state.steps..stop-1 (fewer if every row ends): one compiled loop over a chunk of new tokens."""
    eos = -1 if model.config.eos_token_id is None else model.config.eos_token_id  # None: no row ends (no id is -1)

    def step(s: DecodeState) -> DecodeState:
        rng, key = jax.random.split(s.rng)
        next_B = jnp.where(s.done_B, eos, sample_next(s.logits_BxV, key, *sampling))
        tokens_BxL = jax.lax.dynamic_update_slice(s.tokens_BxL, next_B[:, None], (0, T + s.steps))
        if on_token is not None:
            io_callback(on_token, None, next_B, ordered=True)
        logits_BxV, cache = logits_after(model, params, tokens_BxL, s.cache, T + s.steps)
        return DecodeState(s.steps + 1, tokens_BxL, cache, logits_BxV, s.done_B | (next_B == eos), rng)

    def not_finished(s: DecodeState):
        return (s.steps < stop) & ~jnp.all(s.done_B)

    state = jax.lax.while_loop(not_finished, step, state)
    # All rows ended: end-of-text to the end, here rather than in one more program.
    unwritten_L = jnp.all(state.done_B) & (jnp.arange(state.tokens_BxL.shape[1]) >= T + state.steps)
    return state._replace(tokens_BxL=jnp.where(unwritten_L, eos, state.tokens_BxL))
