"""The next token of each row from its logits: greedy, or sampled with temperature, top-k and top-p."""

from __future__ import annotations

from typing import NamedTuple

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
    # top_p 1 keeps every token, so no filter (as transformers): float32's running mass rounds to 1 before the tail
    return temperature, top_k, None if top_p == 1 else top_p


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
    """One token per row: greedy at temperature 0, else temperature, top-k, then top-p (transformers' order).

    Sampling runs over the top-k candidates (`kept_tokens`), which keeps a step cheap: no full-vocabulary sort
    or noise unless top-p is asked for without top-k. Returns [B] int32 token ids.
    """
    if temperature == 0.0:
        return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
    logits_BxV = logits_BxV.astype(jnp.float32)  # bf16 ones: their masses summed in float32 (XLA:CPU's top_k is faster)
    # From the row's max, kept at 0: a tiny temperature (1e-40, 0 in float32) made every positive logit inf or NaN,
    # and the lowest such id won; now the rest go to -inf, leaving the most likely token.
    below_max_BxV = logits_BxV - logits_BxV.max(axis=-1, keepdims=True)
    logits_BxV = jnp.where(below_max_BxV == 0, 0.0, below_max_BxV / temperature)
    if top_k is None and top_p is None:
        return jax.random.categorical(key, logits_BxV).astype(jnp.int32)
    kept = kept_tokens(logits_BxV, top_k, top_p)
    choice_B = jax.random.categorical(key, kept.logits_BxK)
    token_B = jnp.take_along_axis(kept.ids_BxK, choice_B[:, None], axis=-1)[:, 0].astype(jnp.int32)
    # The tail (tokens tied with the k-th that top-k's k ids left out) is drawn as a whole in proportion to its mass,
    # then one of its tokens uniformly (they are equally likely): without a tail the draws are the candidates'.
    tail_log_mass_B = kept.tail_logit_B + jnp.log(kept.tail_count_B)  # -inf without a tail
    tail_share_B = jnp.exp(tail_log_mass_B - jnp.logaddexp(jax.nn.logsumexp(kept.logits_BxK, -1), tail_log_mass_B))
    in_tail_B = jax.random.uniform(jax.random.fold_in(key, 1), tail_share_B.shape) < tail_share_B

    def with_tail_draws():
        return jnp.where(in_tail_B, tail_token(logits_BxV, kept, jax.random.fold_in(key, 2)), token_B)
    return jax.lax.cond(in_tail_B.any(), with_tail_draws, lambda: token_B)


class Kept(NamedTuple):
    """What top-k, then top-p, keep of each row: `logits_BxK` (-inf where top-p dropped one) at `ids_BxK`, most
    likely first, and the first `tail_count_B` (in id order) of the other tokens tied with the k-th, each at logit
    `tail_logit_B`. transformers keeps every token tied with the k-th; bf16 logits tie often."""

    logits_BxK: jax.Array
    ids_BxK: jax.Array
    tail_count_B: jax.Array
    tail_logit_B: jax.Array


def kept_tokens(logits_BxV, top_k: int | None, top_p: float | None) -> Kept:
    """transformers' top-k and top-p filters as candidates, with ties broken by the lower id first (as lax.top_k)."""
    logits_BxK, ids_BxK = jax.lax.top_k(logits_BxV, min(top_k or logits_BxV.shape[-1], logits_BxV.shape[-1]))
    # Read beside the logits, top_k's k-th became a full sort in XLA:CPU (50 ms a step at B=5): a barrier keeps top_k.
    logits_BxK, ids_BxK, logits_BxV = jax.lax.optimization_barrier((logits_BxK, ids_BxK, logits_BxV))
    kth_B = logits_BxK[:, -1]
    tail_count_B = (logits_BxV == kth_B[:, None]).sum(-1) - (logits_BxK == kth_B[:, None]).sum(-1)  # 0 if K = V
    if top_p is not None and top_p < 1:  # the most likely tokens until their mass reaches top_p: the tail's last
        log_mass_B = jnp.logaddexp(jax.nn.logsumexp(logits_BxK, -1), kth_B + jnp.log(tail_count_B))
        probs_BxK = jnp.exp(logits_BxK - log_mass_B[:, None])
        mass_before_BxK = jnp.cumsum(probs_BxK, axis=-1) - probs_BxK
        logits_BxK = jnp.where(mass_before_BxK < top_p, logits_BxK, -jnp.inf)
        # tail token m (from 0) has mass mass_before_tail + m * tail_prob before it: kept while that is < top_p
        tail_prob_B = jnp.exp(kth_B - log_mass_B)
        room_B = (top_p - (mass_before_BxK[:, -1] + probs_BxK[:, -1])) / jnp.where(tail_prob_B > 0, tail_prob_B, 1)
        kept_of_tail_B = jnp.clip(jnp.ceil(room_B), 0, tail_count_B)  # as many as the mass left to top_p takes
        tail_count_B = jnp.where(tail_prob_B > 0, kept_of_tail_B, 0).astype(tail_count_B.dtype)
    return Kept(logits_BxK, ids_BxK, tail_count_B, kth_B)


def tail_token(logits_BxV, kept: Kept, key):
    """One of each row's kept tail tokens, uniformly: the tied tokens past those among the candidates, in id order."""
    tied_BxV = logits_BxV == kept.tail_logit_B[:, None]
    rank_BxV = jnp.cumsum(tied_BxV, axis=-1, dtype=jnp.int32) - 1
    # A row with a tail kept all its candidates (top-p keeps a prefix; the tail comes last): its tied ones go first.
    first_B = (kept.logits_BxK == kept.tail_logit_B[:, None]).sum(-1)
    pick_B = first_B + jax.random.randint(key, first_B.shape, 0, jnp.maximum(kept.tail_count_B, 1))
    return jnp.argmax(tied_BxV & (rank_BxV == pick_B[:, None]), axis=-1).astype(jnp.int32)
