"""The chunked head + cross-entropy: exact against the plain one in fp32, and no whole-logits buffer."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import rel_error

from gpt2_jax import GPT2, GPT2Config, loss, step
from gpt2_jax.optim import make_optimizer
from gpt2_jax.train_config import default_config

VOCAB, PADDED = 101, 128  # an odd vocabulary with padded embedding rows, as training pads it


def plain_mean_loss(x_BxTxD, embedding_VxD, labels_BxT):
    logits = jnp.einsum("btd,vd->btv", x_BxTxD, embedding_VxD[:VOCAB]).astype(jnp.float32)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels_BxT).mean()


@pytest.fixture
def inputs():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(3, 12, 16)), jnp.float32)
    embedding = jnp.asarray(rng.normal(size=(PADDED, 16)) * 0.5, jnp.float32)
    labels = jnp.asarray(rng.integers(0, VOCAB, size=(3, 12)), jnp.int32)
    return x, embedding, labels


@pytest.mark.parametrize("time", [12, 11])  # 11: the last chunk is padded (but for 1 position a chunk)
@pytest.mark.parametrize("chunk_tokens", [3, 9, 36, 10_000])  # 1, 3, 12 positions per chunk, and one chunk
def test_mean_cross_entropy_and_its_gradient_equal_the_plain_ones(inputs, chunk_tokens, time):
    inputs = inputs[0][:, :time], inputs[1], inputs[2][:, :time]
    ours = jax.value_and_grad(loss.mean_cross_entropy, argnums=(0, 1))(*inputs, VOCAB, chunk_tokens)
    plain = jax.value_and_grad(plain_mean_loss, argnums=(0, 1))(*inputs)
    assert rel_error(ours[0], plain[0]) < 1e-6
    assert rel_error(ours[1][0], plain[1][0]) < 1e-6  # d/dx
    assert rel_error(ours[1][1], plain[1][1]) < 1e-6  # d/d embedding: padded rows get exactly 0
    assert not np.any(ours[1][1][VOCAB:])
    # The gradient scales with the incoming cotangent like any other.
    doubled = jax.grad(lambda x: 2.0 * loss.mean_cross_entropy(x, *inputs[1:], VOCAB, chunk_tokens))(inputs[0])
    assert rel_error(doubled, 2 * plain[1][0]) < 1e-6


def test_in_bfloat16_it_is_as_accurate_as_autodiff_of_the_plain_loss():
    """Against fp32, at a vocabulary large enough that a softmax's sum is in the thousands (where rounding
    the one-hot term in bf16 would show): no worse than autodiff of the plain loss in bf16."""
    rng = np.random.default_rng(1)
    vocab, padded, dim = 8000, 8064, 64
    x = jnp.asarray(rng.normal(size=(4, 64, dim)), jnp.float32)
    embedding = jnp.asarray(rng.normal(size=(padded, dim)) * 0.05, jnp.float32)
    labels = jnp.asarray(rng.integers(0, vocab, size=(4, 64)), jnp.int32)

    def plain(x, embedding):
        logits = jnp.einsum("btd,vd->btv", x, embedding[:vocab]).astype(jnp.float32)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    exact = jax.value_and_grad(plain, argnums=(0, 1))(x, embedding)
    half = x.astype(jnp.bfloat16), embedding.astype(jnp.bfloat16)
    ours = jax.value_and_grad(loss.mean_cross_entropy, argnums=(0, 1))(*half, labels, vocab, 64)
    autodiff = jax.value_and_grad(plain, argnums=(0, 1))(*half)
    assert ours[1][0].dtype == jnp.bfloat16 and rel_error(ours[0], exact[0]) < 1e-3
    for ours_grad, autodiff_grad, exact_grad in zip(ours[1], autodiff[1], exact[1]):
        assert rel_error(ours_grad, exact_grad) < 1.1 * rel_error(autodiff_grad, exact_grad)


def test_token_losses_equal_the_plain_ones(inputs):
    x, embedding, labels = inputs
    logits = jnp.einsum("btd,vd->btv", x, embedding[:VOCAB])
    plain = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    assert rel_error(loss.token_losses(x, embedding, labels, VOCAB, 9), plain) < 1e-6
    assert rel_error(loss.token_losses(x[:, :11], embedding, labels[:, :11], VOCAB, 9), plain[:, :11]) < 1e-6


def test_evaluations_chunks_on_a_cpu_hold_a_fixed_number_of_logits(monkeypatch):
    """128 tokens a chunk for GPT-2's vocabulary (cache-sized logits), one chunk for a small vocabulary."""
    layouts = []
    layout = loss.chunk_layout
    monkeypatch.setattr(loss, "chunk_layout", lambda *args: layouts.append(layout(*args)) or layouts[-1])
    rng = np.random.default_rng(1)
    for rows in (50304, PADDED):
        x = jnp.asarray(rng.normal(size=(2, 300, 8)), jnp.float32)
        embedding = jnp.asarray(rng.normal(size=(rows, 8)), jnp.float32)
        labels = jnp.asarray(rng.integers(0, VOCAB, size=(2, 300)), jnp.int32)
        plain = optax.softmax_cross_entropy_with_integer_labels(jnp.einsum("btd,vd->btv", x, embedding[:VOCAB]), labels)
        assert rel_error(loss.token_losses(x, embedding, labels, VOCAB), plain) < 1e-6
    assert layouts == [(5, 60), (1, 300)]  # 2 x 64 positions a chunk at most, then all 600 tokens at once


def test_chunk_layout_is_the_fewest_equal_chunks_that_fit():
    assert loss.chunk_layout(32, 1024) == (4, 256)
    assert loss.chunk_layout(6, 64) == (1, 64)
    assert loss.chunk_layout(5, 12, 20) == (3, 4)
    assert loss.chunk_layout(100, 7, 10) == (7, 1)  # one position of a batch larger than a chunk
    assert loss.chunk_layout(256, 127) == (4, 32)  # a prime length is padded by one, not cut into 127 chunks
    assert loss.chunk_layout(16, 1000) == (2, 500)


def test_the_train_steps_gradient_equals_the_plain_models(hf_dir):
    from gpt2_jax import from_hf

    config, params = from_hf(str(hf_dir))
    model = GPT2(config)
    windows = jnp.asarray(np.random.default_rng(1).integers(0, config.vocab_size, (2, 17)), jnp.int32)

    def plain(params):
        logits = model.apply({"params": params}, windows[:, :-1])
        return optax.softmax_cross_entropy_with_integer_labels(logits, windows[:, 1:]).mean()

    ours_value, ours_grads = jax.value_and_grad(functools.partial(step.mean_loss, model))(params, windows)
    plain_value, plain_grads = jax.value_and_grad(plain)(params)
    assert rel_error(ours_value, plain_value) < 1e-6
    for (path, ours), plain_leaf in zip(jax.tree_util.tree_leaves_with_path(ours_grads), jax.tree.leaves(plain_grads)):
        assert rel_error(ours, plain_leaf) < 1e-5, jax.tree_util.keystr(path)


def test_the_compiled_train_step_never_holds_the_whole_logits():
    """GPT-2's vocabulary and context at batch 32 (compiled, not run): whole fp32 logits would be 6.6 GB."""
    config = GPT2Config(vocab_size=50257, n_positions=1024, n_embd=32, n_layer=1, n_head=2)
    model = GPT2(config, dtype=jnp.bfloat16, vocab_pad_multiple=64)
    c = default_config()
    optimizer = make_optimizer(c)
    state = jax.eval_shape(functools.partial(step.init_train_state, model, optimizer), jax.random.key(0))
    windows = jax.ShapeDtypeStruct((1, 32, 1025), jnp.int32)
    compiled = jax.jit(functools.partial(step.train_step, model, optimizer)).lower(state, windows).compile()
    full_logits = 32 * 1024 * 50304
    shapes = re.findall(r"f32\[([\d,]+)\]", compiled.as_text())
    largest = max(np.prod([int(d) for d in s.split(",")]) for s in shapes)
    assert largest < full_logits / 2, largest
    # Less scratch memory than one fp32 copy of the logits (the plain loss needs 17 GB here, this 4 GB).
    assert compiled.memory_analysis().temp_size_in_bytes < full_logits * 4
