"""Autoregressive sampling: KV-cached, the decode loop compiled as one XLA program.

The program runs a chunk of new tokens per call (sized to take ~0.1-0.4 s), so that Ctrl-C stops a long
generation within a second, keeping what was made, at the compiled loop's speed. When prompt + new tokens
exceed the model's context (n_positions), no cache is used, from the first step: each step reruns the model on
the last n_positions tokens, as nanoGPT does (learned absolute positions cannot slide a KV cache).
"""

from __future__ import annotations

import functools
import signal
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import io_callback

from gpt2_jax.interrupt import STOP_SIGNALS, StopSignals
from gpt2_jax.kv_cache import init_cache
from gpt2_jax.model import GPT2
from gpt2_jax.next_token import SamplingError, checked_settings, is_scalar, sample_next

MAX_NEW_TOKENS = 1_000_000  # the token buffer is [B, prompt + new] int32: 4 MB a row here


class GenerationInterrupted(KeyboardInterrupt):
    """Ctrl-C (or, in a CLI, SIGTERM or SIGHUP: `signum`) during `generate`: `tokens_BxL` holds the prompt and
    what was made before it."""

    def __init__(self, tokens_BxL: np.ndarray, signum: signal.Signals = signal.SIGINT):
        super().__init__()
        self.tokens_BxL, self.signum = tokens_BxL, signum


def generate(
    model: GPT2,
    params,
    prompt_ids,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    rng: jax.Array | None = None,
    *,
    on_token: Callable[[np.ndarray], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> jax.Array:
    """Continue `prompt_ids` ([T] or [B, T] ints) by `max_new_tokens` tokens of `model` (its config,
    dtype and attention kernel; `GPT2(config)` for the defaults) with `params`.

    temperature 0.0 is greedy; `rng` is a `jax.random.key` (None: key(0), the same draws each call).
    A row that emits `eos_token_id` (if not None) is filled with it from then on, and the loop stops once every row
    has. `on_token`, if given, is called on the host with each step's [B] tokens as they are generated
    (for streaming; a host call per token); `on_progress`, with the count of new tokens made so far, after
    each chunk (cheap). The prompt must fit the context; the continuation may run past it (see the module
    docstring). Ctrl-C (when Python's own handler is in place) stops within a chunk: GenerationInterrupted.
    Returns [B, T + max_new_tokens] token ids (prompt included).
    """
    ids = prompt_ids if isinstance(prompt_ids, jax.Array) else np.asarray(prompt_ids)  # a device's stays there
    if ids.ndim not in (1, 2) or ids.size and not jnp.issubdtype(ids.dtype, jnp.integer):
        raise SamplingError(f"the prompt must be token ids, [T] or [B, T] integers, not {ids.dtype} {ids.shape}")
    if ids.size and not 0 <= int(ids.min()) <= int(ids.max()) < model.config.vocab_size:  # else NaN logits, or wrapped
        raise SamplingError(f"the prompt holds ids {int(ids.min())} to {int(ids.max())}; the model's tokens are 0 "
                            f"to {model.config.vocab_size - 1}")
    prompt_BxT = jnp.atleast_2d(jnp.asarray(ids, dtype=jnp.int32))
    T = prompt_BxT.shape[1]
    if T == 0:
        raise SamplingError("the prompt is empty")
    if T > model.config.n_positions:
        raise SamplingError(f"the prompt of {T} tokens is longer than the context of {model.config.n_positions} tokens")
    if not is_scalar(max_new_tokens, jnp.integer):
        raise SamplingError(f"max_new_tokens={max_new_tokens!r} must be an integer")
    if not 0 <= max_new_tokens <= MAX_NEW_TOKENS:
        raise SamplingError(f"max_new_tokens={max_new_tokens} must be in [0, {MAX_NEW_TOKENS:,}]")
    temperature, top_k, top_p = checked_settings(temperature, top_k, top_p, rng)
    max_new_tokens = int(max_new_tokens)
    state = _start(model, params, prompt_BxT, jax.random.key(0) if rng is None else rng, max_new_tokens)
    decode = functools.partial(_decode, model, params, T=T, sampling=(temperature, top_k, top_p), on_token=on_token)
    chunk, made = 16, 0
    with StopSignals(signal.SIGINT, *STOP_SIGNALS, only_over_python_default=True) as interrupted:
        while made < max_new_tokens and not interrupted.signal:
            began = time.perf_counter()
            state = decode(*state, stop=min(made + chunk, max_new_tokens))
            made, finished = int(state[0]), bool(np.asarray(state[4]).all())  # waits; Ctrl-C is seen here
            if on_progress is not None:
                on_progress(made)
            if finished:
                break
            seconds = time.perf_counter() - began  # chunks of ~0.1-0.4 s (module docstring)
            chunk = chunk * 2 if seconds < 0.1 else max(chunk // 2, 1) if seconds > 0.4 else chunk
    if interrupted.signal:
        raise GenerationInterrupted(np.asarray(state[1])[:, : T + made], signal.Signals[interrupted.signal])
    return state[1]  # rows that ended early hold end-of-text to the end (_decode)


@functools.partial(jax.jit, static_argnums=(0, 4))
def _start(model, params, prompt_BxT, rng, max_new_tokens):
    """The decoding state after the prompt: (steps done, tokens [B, L], cache, next logits [B, V], done [B], rng)."""
    B, T = prompt_BxT.shape
    L = T + max_new_tokens
    # Not-yet-sampled positions hold token 0: a window reads them (causally masked), so they must be real ids.
    tokens_BxL = jnp.concatenate([prompt_BxT, jnp.zeros((B, max_new_tokens), jnp.int32)], axis=1)
    if L > model.config.n_positions:  # windowed: no cache
        logits_BxV, cache = _logits_after(model, params, tokens_BxL, None, T - 1)
    else:  # the prompt in one pass fills the cache
        cache = init_cache(model.config, B, L, model.dtype)
        logits_Bx1xV, cache = model.apply({"params": params}, prompt_BxT, cache, 0, True, method=GPT2.decode)
        logits_BxV = logits_Bx1xV[:, 0]
    return jnp.int32(0), tokens_BxL, cache, logits_BxV, jnp.zeros(B, bool), rng


def _logits_after(model, params, tokens_BxL, cache, position):
    """The logits [B, V] that predict position + 1, and the cache that has seen `position`."""
    P, L, apply = model.config.n_positions, tokens_BxL.shape[1], functools.partial(model.apply, {"params": params})
    if L > P:  # windowed: the model over the last P tokens, the head at one position (not [B, P, V] logits)
        start = jnp.clip(position + 1 - P, 0, L - P)
        x_BxPxD = apply(jax.lax.dynamic_slice_in_dim(tokens_BxL, start, P, axis=1), method=GPT2.hidden)
        return apply(jax.lax.dynamic_slice_in_dim(x_BxPxD, position - start, 1, axis=1), method=GPT2.head)[:, 0], cache
    token_Bx1 = jax.lax.dynamic_slice_in_dim(tokens_BxL, position, 1, axis=1)
    logits_Bx1xV, cache = apply(token_Bx1, cache, position, method=GPT2.decode)
    return logits_Bx1xV[:, 0], cache


@functools.partial(jax.jit, static_argnames=("model", "T", "sampling", "on_token"), donate_argnames=("cache",))
def _decode(model, params, i, tokens_BxL, cache, logits_BxV, done_B, rng, *, stop, T, sampling, on_token):
    """Steps i..stop-1 (fewer if every row ends): one compiled loop over a chunk of new tokens."""
    eos = -1 if model.config.eos_token_id is None else model.config.eos_token_id  # None: no row ends (no id is -1)

    def step(state):
        i, tokens_BxL, cache, logits_BxV, done_B, rng = state
        rng, key = jax.random.split(rng)
        next_B = jnp.where(done_B, eos, sample_next(logits_BxV, key, *sampling))
        tokens_BxL = jax.lax.dynamic_update_slice(tokens_BxL, next_B[:, None], (0, T + i))
        if on_token is not None:
            io_callback(on_token, None, next_B, ordered=True)
        logits_BxV, cache = _logits_after(model, params, tokens_BxL, cache, T + i)
        return i + 1, tokens_BxL, cache, logits_BxV, done_B | (next_B == eos), rng

    def not_finished(state):
        i, *_, done_B, _ = state
        return (i < stop) & ~jnp.all(done_B)

    i, tokens_BxL, cache, logits_BxV, done_B, rng = jax.lax.while_loop(not_finished, step, (i, tokens_BxL, cache,
                                                                                           logits_BxV, done_B, rng))
    unwritten_L = jnp.all(done_B) & (jnp.arange(tokens_BxL.shape[1]) >= T + i)  # all rows ended: end-of-text to the end
    return i, jnp.where(unwritten_L, eos, tokens_BxL), cache, logits_BxV, done_B, rng  # here, not in one more program

