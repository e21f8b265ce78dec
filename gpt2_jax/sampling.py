"""Autoregressive sampling, `generate`: its inputs checked, then the compiled, KV-cached decode loop
(decode_loop.py) a chunk of new tokens per call.

Each chunk is sized to take ~0.1-0.4 s, so that Ctrl-C stops a long generation within a second, keeping what was
made, at the compiled loop's speed. Prompt + new tokens may exceed the model's context (n_positions): then no cache
is used, from the first step (decode_loop.py).
"""

from __future__ import annotations

import functools
import signal
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from gpt2_jax.decode_loop import decode_chunk, start
from gpt2_jax.interrupt import STOP_SIGNALS, StopSignals
from gpt2_jax.model import GPT2
from gpt2_jax.next_token import SamplingError, checked_settings, is_scalar

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
    state = start(model, params, prompt_BxT, jax.random.key(0) if rng is None else rng, max_new_tokens)
    decode = functools.partial(decode_chunk, model, params, T=T, sampling=(temperature, top_k, top_p),
                               on_token=on_token)
    chunk, made = 16, 0
    with StopSignals(signal.SIGINT, *STOP_SIGNALS, only_over_python_default=True) as interrupted:
        while made < max_new_tokens and not interrupted.signal:
            began = time.perf_counter()
            state = decode(state, stop=min(made + chunk, max_new_tokens))
            made, finished = int(state.steps), bool(np.asarray(state.done_B).all())  # waits; Ctrl-C is seen here
            if on_progress is not None:
                on_progress(made)
            if finished:
                break
            seconds = time.perf_counter() - began  # chunks of ~0.1-0.4 s (module docstring)
            chunk = chunk * 2 if seconds < 0.1 else max(chunk // 2, 1) if seconds > 0.4 else chunk
    if interrupted.signal:
        raise GenerationInterrupted(np.asarray(state.tokens_BxL)[:, : T + made], signal.Signals[interrupted.signal])
    return state.tokens_BxL  # rows that ended early hold end-of-text to the end (decode_loop.py)
