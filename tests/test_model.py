"""The model: transformers parity, GPT-2's init, dtype and vocab-padding options, causality."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import TINY_SHAPE, rel_error

from gpt2_jax import GPT2, GPT2Config, attention, from_hf
from gpt2_jax.convert import state_dict_from_params
from gpt2_jax.gelu import gelu_tanh
from gpt2_jax.step import mean_loss


@pytest.fixture(params=[None, 8], ids=["whole", "query-chunks-of-8"])
def query_chunk(request, monkeypatch):
    """The default attention (attention.chunked_attention) as one chunk at these lengths, and by chunks of 8."""
    if not request.param:
        yield
        return
    monkeypatch.setattr(attention, "QUERY_CHUNK", request.param)
    chunked, calls = attention.chunked_attention, []
    monkeypatch.setattr(attention, "chunked_attention", lambda *args: calls.append(args[0].shape) or chunked(*args))
    yield
    assert any(shape[1] > request.param for shape in calls)  # the model's attention ran by chunks


def test_logits_match_transformers_fp32(hf_model, hf_dir, query_chunk):
    config, params = from_hf(str(hf_dir))
    ids = np.random.RandomState(0).randint(0, config.vocab_size, (3, 29))
    ours = GPT2(config).apply({"params": params}, ids)
    with torch.no_grad():
        theirs = hf_model(torch.tensor(ids)).logits.numpy()
    assert ours.shape == theirs.shape and ours.dtype == jnp.float32
    assert rel_error(ours, theirs) < 1e-5


def test_gradients_match_transformers_fp32(hf_model, hf_dir, query_chunk):
    """The whole backward pass (GELU's own gradient, the chunked loss's) against PyTorch's autograd."""
    config, params = from_hf(str(hf_dir))
    windows = np.random.RandomState(6).randint(0, config.vocab_size, (3, 30))
    grads = jax.grad(lambda p: mean_loss(GPT2(config), p, jnp.asarray(windows)))(params)
    hf_model.zero_grad()
    hf_model(torch.tensor(windows), labels=torch.tensor(windows)).loss.backward()
    theirs = {name: param.grad.numpy() for name, param in hf_model.named_parameters()}
    ours = state_dict_from_params(config, grads)
    assert ours.keys() == theirs.keys() - {"lm_head.weight"}  # tied: wte's gradient holds the head's
    for name, grad in ours.items():
        assert rel_error(grad, theirs[name]) < 1e-5, name


def test_gelu_keeps_only_its_input_for_the_backward_pass():
    x = jnp.asarray(np.random.RandomState(7).standard_normal(4096) * 4, jnp.float32)
    reference = jax.grad(lambda x: jnp.sum(jax.nn.gelu(x, approximate=True) ** 2))(x)
    assert rel_error(jax.grad(lambda x: jnp.sum(gelu_tanh(x) ** 2))(x), reference) < 1e-6
    half = jax.grad(lambda x: jnp.sum(gelu_tanh(x.astype(jnp.bfloat16)).astype(jnp.float32) ** 2))(x)
    assert rel_error(half, reference) < 1e-2
    residuals = jax.linearize(gelu_tanh, x)[1]  # what the backward pass reads: the input alone
    assert [leaf.shape for leaf in jax.tree.leaves(residuals)] == [x.shape]


def test_init_is_gpt2s_scheme():
    config = GPT2Config(vocab_size=512, n_positions=64, n_embd=128, n_layer=8, n_head=4)
    params = GPT2(config).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
    assert np.std(params["wte"]["embedding"]) == pytest.approx(0.02, rel=0.05)
    assert np.std(params["wpe"]["embedding"]) == pytest.approx(0.02, rel=0.05)
    assert np.std(params["h_3"]["attn"]["c_attn"]["kernel"]) == pytest.approx(0.02, rel=0.05)
    assert np.std(params["h_3"]["mlp"]["c_fc"]["kernel"]) == pytest.approx(0.02, rel=0.05)
    residual_std = 0.02 / np.sqrt(2 * config.n_layer)  # each block adds two residual branches
    assert np.std(params["h_3"]["attn"]["c_proj"]["kernel"]) == pytest.approx(residual_std, rel=0.05)
    assert np.std(params["h_3"]["mlp"]["c_proj"]["kernel"]) == pytest.approx(residual_std, rel=0.05)
    assert not np.any(params["h_3"]["mlp"]["c_fc"]["bias"])
    np.testing.assert_array_equal(params["h_0"]["ln_1"]["scale"], 1.0)
    np.testing.assert_array_equal(params["ln_f"]["bias"], 0.0)


def test_parameter_count_of_the_presets_matches_gpt2():
    counts = {"gpt2": 124_439_808, "gpt2-medium": 354_823_168, "gpt2-large": 774_030_080, "gpt2-xl": 1_557_611_200}
    for name, expected in counts.items():
        shapes = jax.eval_shape(GPT2(GPT2Config.preset(name)).init, jax.random.key(0), jnp.zeros((1, 1), jnp.int32))
        assert sum(x.size for x in jax.tree.leaves(shapes)) == expected, name


def test_vocab_padding_leaves_logits_unchanged(hf_dir):
    config, params = from_hf(str(hf_dir))
    padded = GPT2(config, vocab_pad_multiple=64)
    rows = np.random.RandomState(1).normal(size=(128 - config.vocab_size, config.n_embd)).astype(np.float32)
    padded_params = {**params, "wte": {"embedding": jnp.concatenate([params["wte"]["embedding"], rows])}}
    assert jax.eval_shape(padded.init, jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"]["wte"]["embedding"].shape == (128, config.n_embd)
    ids = np.random.RandomState(2).randint(0, config.vocab_size, (2, 11))
    np.testing.assert_allclose(padded.apply({"params": padded_params}, ids), GPT2(config).apply({"params": params}, ids), rtol=1e-6, atol=1e-6)


def test_a_vocab_pad_multiple_below_one_is_refused():
    for bad in (0, -64, 2.5):  # 0 divided by zero, and -64 made a negative-sized embedding
        with pytest.raises(ValueError, match=f"vocab_pad_multiple={bad} must be a positive integer"):
            jax.eval_shape(GPT2(GPT2Config(vocab_size=100, n_positions=8, n_embd=8, n_layer=1, n_head=2),
                                vocab_pad_multiple=bad).init, jax.random.key(0), jnp.zeros((1, 1), jnp.int32))
    numpy_int = GPT2(GPT2Config(vocab_size=100, n_positions=8, n_embd=8, n_layer=1, n_head=2), vocab_pad_multiple=np.int64(64))
    assert jax.eval_shape(numpy_int.init, jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"]["wte"]["embedding"].shape == (128, 8)


def test_bfloat16_compute_stays_close_and_returns_fp32_logits(hf_dir):
    config, params = from_hf(str(hf_dir))
    ids = np.random.RandomState(3).randint(0, config.vocab_size, (2, 17))
    full = GPT2(config).apply({"params": params}, ids)
    half = GPT2(config, dtype=jnp.bfloat16).apply({"params": params}, ids)
    assert half.dtype == jnp.float32
    assert rel_error(half, full) < 3e-2


def test_a_bfloat16_residual_stream_stays_close_to_the_fp32_one(hf_dir):
    config, params = from_hf(str(hf_dir))
    ids = np.random.RandomState(5).randint(0, config.vocab_size, (2, 17))

    def logits_and_stream_dtype(model):
        logits, state = model.apply({"params": params}, ids, capture_intermediates=True, mutable=["intermediates"])
        return logits, state["intermediates"]["h_1"]["__call__"][0][0].dtype  # a block's output: (x, cache)

    full, full_stream = logits_and_stream_dtype(GPT2(config, dtype=jnp.bfloat16))
    half, half_stream = logits_and_stream_dtype(GPT2(config, dtype=jnp.bfloat16, residual_dtype=jnp.bfloat16))
    assert (full_stream, half_stream) == (jnp.float32, jnp.bfloat16)
    assert half.dtype == jnp.float32 and rel_error(half, full) < 3e-2


def test_remat_gives_the_same_logits_and_gradients(hf_dir):
    config, params = from_hf(str(hf_dir))
    ids = np.random.RandomState(4).randint(0, config.vocab_size, (2, 9))

    def loss(model, params):
        return jnp.mean(model.apply({"params": params}, ids) ** 2)

    plain, remat = jax.value_and_grad(loss, argnums=1)(GPT2(config), params), jax.value_and_grad(loss, argnums=1)(GPT2(config, remat=True), params)
    np.testing.assert_allclose(plain[0], remat[0], rtol=1e-6)
    for a, b in zip(jax.tree.leaves(plain[1]), jax.tree.leaves(remat[1])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_split_qkv_gives_the_same_params_logits_and_gradients_from_three_matmuls(hf_dir):
    config, params = from_hf(str(hf_dir))
    ids = jnp.asarray(np.random.RandomState(8).randint(0, config.vocab_size, (2, 11)))
    one, three = GPT2(config), GPT2(config, split_qkv=True)
    init_one, init_three = (m.init(jax.random.key(1), ids)["params"] for m in (one, three))
    assert jax.tree.all(jax.tree.map(np.array_equal, init_one, init_three))
    assert rel_error(three.apply({"params": params}, ids), one.apply({"params": params}, ids)) < 1e-6
    grads = [jax.grad(lambda p, m=m: mean_loss(m, p, ids))(params) for m in (one, three)]
    assert jax.tree.all(jax.tree.map(lambda a, b: rel_error(a, b) < 1e-5, *grads))
    matmuls = [str(jax.make_jaxpr(m.apply)({"params": params}, ids)).count("dot_general") for m in (one, three)]
    assert matmuls[1] - matmuls[0] == 2 * config.n_layer  # q, k, v: three where there was one


def test_causal_no_position_sees_the_future():
    config = GPT2Config(**TINY_SHAPE)
    model = GPT2(config)
    params = model.init(jax.random.key(1), jnp.zeros((1, 12), jnp.int32))["params"]
    ids = jnp.asarray(np.random.RandomState(5).randint(0, config.vocab_size, (1, 12)))

    def logits_at(wpe_PxD, t):  # wpe row p is added to the input at position p only
        return model.apply({"params": {**params, "wpe": {"embedding": wpe_PxD}}}, ids)[0, t].sum()

    for t in (0, 5, 11):
        grad_PxD = jax.grad(logits_at)(params["wpe"]["embedding"], t)
        depends_on = np.abs(np.asarray(grad_PxD)).sum(-1) > 0
        assert depends_on[: t + 1].all() and not depends_on[t + 1 :].any(), t


def test_ids_past_the_context_or_not_a_batch_are_refused_not_nan():
    """T > n_positions read position rows that do not exist: NaN logits, silently; [T] ids an IndexError."""
    config = GPT2Config(**TINY_SHAPE)
    model = GPT2(config)
    params = model.init(jax.random.key(1), jnp.zeros((1, 4), jnp.int32))["params"]
    n = config.n_positions
    assert np.isfinite(model.apply({"params": params}, jnp.zeros((2, n), jnp.int32))).all()
    for shape in ((2, n + 1), (n,), (1, 2, 3)):
        with pytest.raises(ValueError, match=rf"ids of shape \({', '.join(map(str, shape))},?\): \[B, T\], T <= {n}"):
            model.apply({"params": params}, jnp.zeros(shape, jnp.int32))


def test_an_unknown_attention_kernel_is_refused_by_the_forward_and_the_decoder_alike():
    """Decoding took any name but "cudnn" for XLA's attention ("", the train config's "platform's pick", too)."""
    from gpt2_jax.kv_cache import init_cache

    config = GPT2Config(**TINY_SHAPE)
    params = GPT2(config).init(jax.random.key(1), jnp.zeros((1, 4), jnp.int32))["params"]
    for name in ("", "XLA", "flash"):
        model = GPT2(config, attention_impl=name)
        with pytest.raises(ValueError, match=f"attention implementation {name!r}: one of"):
            model.apply({"params": params}, jnp.zeros((1, 4), jnp.int32))
        with pytest.raises(ValueError, match=f"attention implementation {name!r}: one of"):
            model.apply({"params": params}, jnp.zeros((1, 4), jnp.int32), init_cache(config, 1, 8), 0,
                        method=GPT2.decode)


def test_pallas_splash_attention_matches_xla(hf_dir):
    """The TPU kernel (Pallas splash attention), run by Pallas's interpreter here: logits and gradients."""
    config, params = from_hf(str(hf_dir))
    ids = jnp.asarray(np.random.RandomState(3).randint(0, config.vocab_size, (2, 40)))

    def loss(params, impl):
        return GPT2(config, attention_impl=impl).apply({"params": params}, ids).std()

    assert rel_error(GPT2(config, attention_impl="pallas").apply({"params": params}, ids),
                     GPT2(config, attention_impl="xla").apply({"params": params}, ids)) < 1e-5
    ours, xla = (jax.grad(loss)(params, impl) for impl in ("pallas", "xla"))
    assert rel_error(ours["h_1"]["attn"]["c_attn"]["kernel"], xla["h_1"]["attn"]["c_attn"]["kernel"]) < 1e-5


def test_attention_by_chunks_of_queries_is_xlas_attention():
    """Values and gradients against jax.nn.dot_product_attention's XLA path in fp32: chunks of 16 over 45 positions
    (the last one partial), random q, k, v; in bf16 as close as XLA's own bf16 attention is to fp32."""
    q, k, v = (jnp.asarray(np.random.RandomState(seed).standard_normal((2, 45, 3, 8)) * 2, jnp.float32)
               for seed in (10, 11, 12))
    weights = jnp.asarray(np.random.RandomState(13).standard_normal((2, 45, 3, 8)), jnp.float32)

    def xla(q, k, v):
        return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="xla")

    def chunked(q, k, v):
        return attention.chunked_attention(q, k, v, chunk=16)

    assert rel_error(chunked(q, k, v), xla(q, k, v)) < 1e-6
    ours, theirs = (jax.grad(lambda *qkv: jnp.sum(f(*qkv) * weights), argnums=(0, 1, 2))(q, k, v)
                    for f in (chunked, xla))
    for name, grad, reference in zip("qkv", ours, theirs):
        assert rel_error(grad, reference) < 1e-5, name
    half = [t.astype(jnp.bfloat16) for t in (q, k, v)]
    assert chunked(*half).dtype == jnp.bfloat16
    exact = xla(q, k, v)
    assert rel_error(chunked(*half).astype(jnp.float32), exact) <= 2 * rel_error(xla(*half).astype(jnp.float32), exact)
    assert attention.attend(q, k, v, None, "chunked").shape == q.shape  # QUERY_CHUNK=128 > 45: XLA's whole square
