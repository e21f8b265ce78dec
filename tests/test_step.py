"""The train step: the loss falls, and accumulating k micro-batches equals one k-times batch."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gpt2_jax import GPT2, GPT2Config
from gpt2_jax.optim import make_optimizer
from gpt2_jax.step import eval_step, init_train_state, train_step, window_losses
from gpt2_jax.train_config import default_config

CONFIG = GPT2Config(vocab_size=61, n_positions=16, n_embd=32, n_layer=2, n_head=4)


def setup(lr=3e-3):
    c = default_config()
    c.learning_rate, c.warmup_steps, c.max_steps = lr, 0, 100
    model, optimizer = GPT2(CONFIG), make_optimizer(c)
    return model, optimizer, init_train_state(model, optimizer, jax.random.key(0))


def windows(shape, seed=0):
    return jnp.asarray(np.random.RandomState(seed).randint(0, CONFIG.vocab_size, shape), jnp.int32)


def test_loss_falls_on_a_repeated_batch():
    model, optimizer, state = setup()
    step = jax.jit(functools.partial(train_step, model, optimizer))
    batch = windows((1, 8, 17))
    losses = []
    for _ in range(30):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    assert losses[0] > np.log(CONFIG.vocab_size) - 0.3  # starts near uniform
    assert losses[-1] < 0.5 * losses[0]


def test_accumulating_micro_batches_equals_one_big_batch():
    model, _, state = setup()
    optimizer = optax.sgd(1.0)  # linear in the gradient, so the params compare the mean gradients
    state = state._replace(opt_state=optimizer.init(state.params))
    batch_8xL = windows((8, 17), seed=1)
    big_state, big = train_step(model, optimizer, state, batch_8xL[None])
    small_state, small = train_step(model, optimizer, state, batch_8xL.reshape(4, 2, 17))
    np.testing.assert_allclose(small["loss"], big["loss"], rtol=1e-6)
    np.testing.assert_allclose(small["grad_norm"], big["grad_norm"], rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), small_state.params, big_state.params)


def test_eval_step_sums_the_losses_and_bytes_of_its_targets():
    model, _, state = setup()
    batch = np.array(windows((3, 9), seed=2))
    losses = np.asarray(window_losses(model, state.params, jnp.asarray(batch)))
    batch[1, 4:] = -1  # padding: row 1 keeps its first 3 targets
    token_bytes = np.arange(CONFIG.vocab_size) % 3  # ids with 0 bytes: like <|endoftext|>, no text
    nats, count, text_nats, n_bytes = eval_step(model, state.params, jnp.asarray(token_bytes), jnp.asarray(batch))
    scored = np.arange(8)[None, :] < np.asarray([[8], [3], [8]])
    np.testing.assert_allclose(nats, losses[scored].sum(), rtol=1e-6)
    assert int(count) == 8 + 3 + 8 and int(n_bytes) == token_bytes[batch[:, 1:][scored]].sum()
    np.testing.assert_allclose(text_nats, losses[scored & (token_bytes[np.maximum(batch[:, 1:], 0)] > 0)].sum(), rtol=1e-6)
