"""The next token of each row from its logits: greedy, or sampled with temperature, top-k and top-p."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from gpt2_jax.errors import UserError


class SamplingError(UserError):
    """An empty prompt, one that leaves no room in the context, or settings out of range."""


def checked_settings(temperature, top_k: int | None, top_p: float | None, rng):
    """(temperature, top_k, top_p) as Python numbers (a NumPy or JAX scalar too: the compiled loop is keyed on them,
    and an array is no key), if in range and `rng` is one JAX random key or None; else a SamplingError."""
    for name, value, kind in (("temperature", temperature, np.number), ("top_k", top_k, np.integer),
                              ("top_p", top_p, np.number)):
        if (value is not None or name == "temperature") and not is_scalar(value, kind):
            raise SamplingError(f"{name}={value!r} must be {'an integer' if kind is np.integer else 'a number'}")
    temperature, top_k, top_p = float(temperature), top_k and int(top_k), top_p and float(top_p)
    for ok, problem in ((0 <= temperature < np.inf, f"temperature={temperature} must be 0 (greedy) or positive"),
                        (top_k is None or top_k >= 1, f"top_k={top_k} must be at least 1 (unset: every token)"),
                        (top_p is None or 0 < top_p <= 1, f"top_p={top_p} must be in (0, 1] (unset: every token)")):
        if not ok:
            raise SamplingError(problem)
    if rng is not None and not is_key(rng):
        got = f"an array of {rng.dtype}, shape {rng.shape}" if hasattr(rng, "shape") else repr(rng)
        raise SamplingError(f"rng must be one JAX random key, jax.random.key(seed), not {got}")
    return temperature, top_k, top_p


def is_key(rng) -> bool:
    """One `jax.random.key(seed)`, or one older `jax.random.PRNGKey(seed)` (uint32 words)."""
    if not isinstance(rng, jax.Array):
        return False
    typed = jnp.issubdtype(rng.dtype, jax.dtypes.prng_key)
    return rng.shape == () if typed else rng.dtype == jnp.uint32 and rng.ndim == 1


def is_scalar(value, kind) -> bool:
    """A Python, NumPy or JAX scalar of `kind` (np.number, np.integer): not a bool, a string, None or an array."""
    return np.ndim(value) == 0 and np.issubdtype(np.asarray(value).dtype, kind)


def sample_next(logits_BxV, key, temperature: float, top_k: int | None, top_p: float | None):
    """One token per row: greedy at temperature 0, else temperature, top-k, then top-p.

    The order is transformers'. Top-p keeps the most likely tokens until their mass reaches
    p (always at least one). Sampling runs over the top-k candidates only, which keeps a
    step cheap: no full-vocabulary sort or noise unless top-p is asked for without top-k.
    Returns [B] int32 token ids.
    """
    if temperature == 0.0:
        return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
    # From the row's max, kept at 0: a tiny temperature (1e-40, 0 in float32) made every positive logit inf or NaN,
    # and the lowest such id won; now the rest go to -inf, leaving the most likely token.
    below_max_BxV = logits_BxV - logits_BxV.max(axis=-1, keepdims=True)
    logits_BxV = jnp.where(below_max_BxV == 0, 0.0, below_max_BxV / temperature)
    if top_k is None and top_p is None:
        return jax.random.categorical(key, logits_BxV).astype(jnp.int32)
    k = min(top_k or logits_BxV.shape[-1], logits_BxV.shape[-1])
    logits_BxK, ids_BxK = jax.lax.top_k(logits_BxV, k)  # sorted, most likely first
    if top_p is not None:
        probs_BxK = jax.nn.softmax(logits_BxK, axis=-1)
        mass_before_BxK = jnp.cumsum(probs_BxK, axis=-1) - probs_BxK
        logits_BxK = jnp.where(mass_before_BxK < top_p, logits_BxK, -jnp.inf)
    choice_B = jax.random.categorical(key, logits_BxK)
    return jnp.take_along_axis(ids_BxK, choice_B[:, None], axis=-1)[:, 0].astype(jnp.int32)
