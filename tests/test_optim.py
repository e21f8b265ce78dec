"""The optimizer: warmup + cosine schedule, weight decay on matrices only, global-norm clipping."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gpt2_jax.optim import decay_mask, learning_rate_schedule, learning_rates, make_optimizer
from gpt2_jax.train_config import default_config


@pytest.fixture
def config():
    c = default_config()
    c.learning_rate, c.min_lr_ratio, c.warmup_steps, c.max_steps = 1e-3, 0.1, 100, 1000
    return c


def test_schedule_warms_up_linearly_then_decays_by_cosine_to_the_floor(config):
    schedule = learning_rate_schedule(config)
    rate = lambda step: float(schedule(step - 1))  # noqa: E731  optax's count is the train step - 1
    assert rate(1) == pytest.approx(1e-5, rel=1e-5)  # the first step moves (at rate 0 it only fed Adam's moments)
    assert rate(50) == pytest.approx(5e-4)
    assert rate(100) == pytest.approx(1e-3)
    halfway = 100 + (1000 - 100) // 2  # cosine: halfway between peak and floor
    assert rate(halfway) == pytest.approx(1e-4 + 0.5 * (1e-3 - 1e-4), rel=1e-4)
    assert rate(1000) == pytest.approx(1e-4) and rate(5000) == pytest.approx(1e-4)
    values = [rate(s) for s in range(100, 1001, 50)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def cosine(step, peak, floor, warmup, total):  # the schedule by hand: past warmup, cosine from peak to floor
    return floor + 0.5 * (peak - floor) * (1 + np.cos(np.pi * (step - warmup) / (total - warmup)))


def test_learning_rates_before_and_after_a_change_of_settings(config):
    """A resumed run names what its changed settings do to the next step's rate: a later max_steps raises
    it, an earlier one lowers it, a new peak scales it, settings the schedule does not read change nothing."""
    later, earlier = learning_rates(config, {"max_steps": 500}, 400), learning_rates(config, {"max_steps": 2000}, 400)
    assert later == pytest.approx((cosine(401, 1e-3, 1e-4, 100, 500), cosine(401, 1e-3, 1e-4, 100, 1000)))
    assert later[0] < later[1] and earlier[0] > earlier[1]
    assert earlier[0] == pytest.approx(cosine(401, 1e-3, 1e-4, 100, 2000))
    then, now = learning_rates(config, {"learning_rate": 3e-3, "seed": 7, "batch_size": 4}, 400)
    assert then == pytest.approx(3 * now) and now == pytest.approx(cosine(401, 1e-3, 1e-4, 100, 1000))
    assert learning_rates(config, {"seed": 7}, 400)[0] == learning_rates(config, {}, 400)[1]
    assert config.max_steps == 1000 and config.learning_rate == 1e-3  # the run's config is not touched


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
