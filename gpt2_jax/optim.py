"""The optimizer: optax AdamW after global-norm clipping, on a warmup + cosine schedule.

GPT-3's recipe as nanoGPT and build-nanogpt use it: linear warmup to `learning_rate`, cosine
decay to `learning_rate * min_lr_ratio` at `max_steps`, then flat; weight decay on matrices
only (kernels and embeddings), never on biases or LayerNorm. Gradient accumulation is not
here: the train step averages micro-batch gradients inside one compiled call (step.py), so
optax sees one update per optimizer step.
"""

from __future__ import annotations

import math

import jax
import optax


def learning_rate_schedule(config) -> optax.Schedule:
    """Warmup then cosine decay, by train step (from 1); optax's update `count` is the step - 1. So the first step
    already moves (learning_rate / warmup_steps, as in build-nanogpt; a schedule read at the count would
    spend step 1 at rate 0) and step warmup_steps reaches the peak."""
    by_step = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=config.learning_rate,
        warmup_steps=config.warmup_steps,
        decay_steps=config.max_steps,  # optax counts the warmup inside decay_steps
        end_value=config.learning_rate * config.min_lr_ratio,
    )
    return lambda count: by_step(count + 1)


def learning_rates(config, earlier: dict, step: int) -> tuple[float, float]:
    """Optimizer step `step`'s learning rate (optax counts from 0) with the `earlier` values of settings
    ({key: value}; those the schedule does not read are ignored) and with `config`'s: (then, now)."""
    then = config.copy_and_resolve_references()
    for key in ("learning_rate", "warmup_steps", "max_steps", "min_lr_ratio"):  # what the schedule reads
        then[key] = earlier.get(key, config[key])
    return float(learning_rate_schedule(then)(step)), float(learning_rate_schedule(config)(step))


def decay_mask(params):
    """True for the matrices (ndim >= 2), which weight decay applies to."""
    return jax.tree.map(lambda x: x.ndim >= 2, params)


def make_optimizer(config) -> optax.GradientTransformation:
    """The gradient clipped to a global norm of grad_clip, then AdamW on the schedule, decaying matrices only."""
    return optax.chain(
        optax.clip_by_global_norm(config.grad_clip),
        optax.adamw(
            learning_rate_schedule(config),
            b1=config.b1,
            b2=config.b2,
            eps=config.eps,
            weight_decay=config.weight_decay,
            mask=decay_mask,
        ),
    )


def optimizer_checks(c) -> list[tuple[bool, str]]:
    """(ok, message) for the schedule's and AdamW's keys; a NaN fails every range (its comparisons are False)."""
    return [
        (0 < c.learning_rate < math.inf, f"learning_rate={c.learning_rate} must be a positive number"),
        (0 < c.min_lr_ratio <= 1, f"min_lr_ratio={c.min_lr_ratio} must be in (0, 1]"),
        (c.warmup_steps >= 0, f"warmup_steps={c.warmup_steps} must be >= 0 (0: no warmup)"),
        (c.warmup_steps < c.max_steps, f"warmup_steps={c.warmup_steps} must be below max_steps={c.max_steps} "
                                            "(a shorter run: lower --config.warmup_steps too)"),
        (0 <= c.b1 < 1, f"b1={c.b1} must be in [0, 1)"),
        (0 <= c.b2 < 1, f"b2={c.b2} must be in [0, 1)"),
        # eps keeps the update finite where a gradient is always 0 (the padded vocabulary's rows).
        (0 < c.eps < math.inf, f"eps={c.eps} must be a finite number > 0"),
        (0 <= c.weight_decay < math.inf, f"weight_decay={c.weight_decay} must be a finite number >= 0 (0: no decay)"),
        # optax scales the gradient by grad_clip / its norm above grad_clip: 0 would zero every update.
        (0 < c.grad_clip, f"grad_clip={c.grad_clip} must be > 0 (the largest gradient norm kept; inf: no clipping)"),
    ]
