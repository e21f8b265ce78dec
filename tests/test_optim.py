"""The optimizer: warmup + cosine schedule, weight decay on matrices only, global-norm clipping."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gpt2_jax.optim import decay_mask, learning_rate_schedule, make_optimizer
from gpt2_jax.train_config import default_config


@pytest.fixture
def config():
    c = default_config()
    c.learning_rate, c.min_lr_ratio, c.warmup_steps, c.max_steps = 1e-3, 0.1, 100, 1000
    return c


def test_schedule_warms_up_linearly_then_decays_by_cosine_to_the_floor(config):
    schedule = learning_rate_schedule(config)
    assert float(schedule(0)) == 0.0
    assert float(schedule(50)) == pytest.approx(5e-4)
    assert float(schedule(100)) == pytest.approx(1e-3)
    halfway = 100 + (1000 - 100) // 2  # cosine: halfway between peak and floor
    assert float(schedule(halfway)) == pytest.approx(1e-4 + 0.5 * (1e-3 - 1e-4), rel=1e-4)
    assert float(schedule(1000)) == pytest.approx(1e-4) and float(schedule(5000)) == pytest.approx(1e-4)
    values = [float(schedule(s)) for s in range(100, 1001, 50)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_weight_decay_touches_matrices_only(config):
    params = {"kernel": jnp.ones((3, 4)), "embedding": jnp.ones((5, 4)), "bias": jnp.ones(4), "scale": jnp.ones(4)}
    assert decay_mask(params) == {"kernel": True, "embedding": True, "bias": False, "scale": False}
    config.weight_decay, config.warmup_steps = 0.5, 0
    optimizer = make_optimizer(config)
    zero_grads = jax.tree.map(jnp.zeros_like, params)
    updates, _ = optimizer.update(zero_grads, optimizer.init(params), params)
    lr = float(learning_rate_schedule(config)(0))
    np.testing.assert_allclose(updates["kernel"], -lr * 0.5 * params["kernel"], rtol=1e-6)
    np.testing.assert_allclose(updates["embedding"], -lr * 0.5 * params["embedding"], rtol=1e-6)
    np.testing.assert_array_equal(updates["bias"], 0.0)
    np.testing.assert_array_equal(updates["scale"], 0.0)


def test_gradients_are_clipped_to_the_global_norm(config):
    config.weight_decay, config.warmup_steps, config.grad_clip = 0.0, 0, 1.0
    config.eps = 1.0  # a large epsilon makes Adam's step depend on the gradient's scale
    params = {"a": jnp.ones((2, 2)), "b": jnp.ones(3)}
    grads = {"a": jnp.full((2, 2), 1.5), "b": jnp.asarray([4.0, 0.0, 0.0])}  # global norm 5
    assert float(optax.tree.norm(grads)) == pytest.approx(5.0)
    optimizer = make_optimizer(config)
    reference = optax.adamw(learning_rate_schedule(config), b1=config.b1, b2=config.b2, eps=1.0, weight_decay=0.0)

    def step(transform, g):
        return transform.update(g, transform.init(params), params)[0]

    ours = step(optimizer, grads)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6), ours, step(reference, jax.tree.map(lambda g: g / 5.0, grads)))
    assert not np.allclose(ours["b"], step(reference, grads)["b"])
