"""The next token of each row from its logits: greedy, or sampled with temperature, top-k and top-p."""

from __future__ import annotations

import jax
import jax.numpy as jnp


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
