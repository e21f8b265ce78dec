"""The train and eval steps as pure functions: train_step(state, windows) -> (state, metrics),
eval_step's per-batch sums and HellaSwag's ending_losses.

train.py compiles the train step with its shardings, validation.py the eval step (inside its running
sums), hellaswag.py the ending losses; nothing here knows about devices.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from gpt2_jax import loss
from gpt2_jax.model import GPT2


class TrainState(NamedTuple):
    """What a train step updates, and a checkpoint holds: the params and the optimizer's state (a pytree each)."""

    params: Any
    opt_state: Any


def init_train_state(model: GPT2, optimizer: optax.GradientTransformation, rng: jax.Array) -> TrainState:
    """GPT-2's initialisation (model.py) and a fresh optimizer state."""
    params = model.init(rng, jnp.zeros((1, 1), jnp.int32))["params"]
    return TrainState(params, optimizer.init(params))


def window_losses(model: GPT2, params, windows_BxL: jax.Array, positions_BxP: jax.Array | None = None) -> jax.Array:
    """Next-token cross-entropy [B, L-1] (fp32) of each window's tokens 1..L-1 given the ones before; with
    positions_BxP, [B, P] of the targets at those positions only (the head runs at them alone)."""
    x_BxTxD = model.apply({"params": params}, windows_BxL[:, :-1], method=GPT2.hidden)
    labels_BxT = windows_BxL[:, 1:]
    if positions_BxP is not None:
        x_BxTxD = jnp.take_along_axis(x_BxTxD, positions_BxP[..., None], axis=1)
        labels_BxT = jnp.take_along_axis(labels_BxT, positions_BxP, axis=1)
    return loss.token_losses(x_BxTxD, params["wte"]["embedding"], labels_BxT, model.config.vocab_size)


def mean_loss(model: GPT2, params, windows_BxL: jax.Array) -> jax.Array:
    """The mean of `window_losses`, with a gradient that never holds the whole logits (loss.py)."""
    x_BxTxD = model.apply({"params": params}, windows_BxL[:, :-1], method=GPT2.hidden)
    return loss.mean_cross_entropy(x_BxTxD, params["wte"]["embedding"], windows_BxL[:, 1:], model.config.vocab_size)


def train_step(model: GPT2, optimizer: optax.GradientTransformation, state: TrainState, windows_AxBxL: jax.Array):
    """One optimizer step on A micro-batches of B windows: their mean gradient, clipped, AdamW.

    Returns (new state, {"loss": mean loss, "grad_norm": global norm before clipping,
    "param_norm": global norm of the new params}).
    """
    def accumulate(grads_sum, windows_BxL):
        loss_value, grads = jax.value_and_grad(functools.partial(mean_loss, model))(state.params, windows_BxL)
        return jax.tree.map(jnp.add, grads_sum, grads), loss_value

    zeros = jax.tree.map(jnp.zeros_like, state.params)
    grads_sum, losses_A = jax.lax.scan(accumulate, zeros, windows_AxBxL)
    grads = jax.tree.map(lambda g: g / windows_AxBxL.shape[0], grads_sum)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": losses_A.mean(), "grad_norm": optax.tree.norm(grads), "param_norm": optax.tree.norm(params)}
    return TrainState(params, opt_state), metrics


def eval_step(model: GPT2, params, token_bytes_V: jax.Array, windows_BxL: jax.Array):
    """Sums over a batch, so batches add up exactly: (nats, target tokens, nats of the targets that are
    text, their UTF-8 bytes). Token -1 marks padding (no target); token_bytes_V gives each id's bytes."""
    targets_BxT = windows_BxL[:, 1:]
    scored_BxT = targets_BxT >= 0
    bytes_BxT = jnp.where(scored_BxT, token_bytes_V[jnp.maximum(targets_BxT, 0)], 0)
    losses_BxT = window_losses(model, params, jnp.maximum(windows_BxL, 0))
    return (jnp.sum(jnp.where(scored_BxT, losses_BxT, 0)), jnp.sum(scored_BxT, dtype=jnp.int32),
            jnp.sum(jnp.where(bytes_BxT > 0, losses_BxT, 0)), jnp.sum(bytes_BxT, dtype=jnp.int32))


def ending_losses(model: GPT2, params, tokens_NxL: jax.Array, mask_NxL: jax.Array, ending_targets: int):
    """(summed, mean) loss [N] of each row's masked targets: one run of at most `ending_targets` at the row's
    end (hellaswag.render's endings). The head runs at those positions only, not at the context's."""
    target_mask_NxT = mask_NxL[:, 1:]
    count_N = jnp.sum(target_mask_NxT, axis=-1)
    positions_NxE = jnp.argmax(target_mask_NxT, axis=-1)[:, None] + jnp.arange(ending_targets)
    losses_NxE = window_losses(model, params, tokens_NxL, jnp.minimum(positions_NxE, target_mask_NxT.shape[1] - 1))
    summed_N = jnp.sum(jnp.where(jnp.arange(ending_targets) < count_N[:, None], losses_NxE, 0), axis=-1)
    return summed_N, summed_N / jnp.maximum(count_N, 1)
