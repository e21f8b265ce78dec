"""layer_norm.py and layer_norm_kernel.py: the residual add + LayerNorm, XLA's and the Pallas kernel's
(in Pallas's interpreter here, the same kernel code a GPU compiles), against plain two-pass math."""

import contextlib
import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.ad_checkpoint import print_saved_residuals

from gpt2_jax import GPT2, GPT2Config, layer_norm_kernel, sharding
from gpt2_jax.layer_norm import AddLayerNorm, fused_add_layer_norm

EPS = 1e-5


def reference(x, delta, scale, bias, y_dtype, keep_sum=True):
    """The add in x's dtype, then LayerNorm with float32 statistics and the two-pass variance."""
    x_new = x if delta is None else x + delta.astype(x.dtype)
    x32 = x_new.astype(jnp.float32)
    mean = x32.mean(-1, keepdims=True)
    variance = ((x32 - mean) ** 2).mean(-1, keepdims=True)
    y = ((x32 - mean) * jax.lax.rsqrt(variance + EPS) * scale + bias).astype(y_dtype)
    return (x_new, y) if keep_sum else y


def inputs(x_dtype=jnp.float32, delta_dtype=jnp.float32, shape=(3, 50, 48)):
    """150 rows (not a multiple of the kernel's 64 per program), 48 columns (not a power of two)."""
    keys = jax.random.split(jax.random.key(0), 6)
    x = (2 * jax.random.normal(keys[0], shape) + 0.5).astype(x_dtype)
    delta = jax.random.normal(keys[1], shape).astype(delta_dtype)
    scale = 1 + 0.3 * jax.random.normal(keys[2], shape[-1:])
    bias = 0.2 * jax.random.normal(keys[3], shape[-1:])
    return x, delta, scale, bias, jax.random.normal(keys[4], shape), jax.random.normal(keys[5], shape)


def weighted(fn, keep_sum, weight_sum, weight_y):
    """A scalar of both outputs, with a nonlinearity so that no gradient is a constant."""
    def loss(x, delta, scale, bias):
        out = fn(x, delta, scale, bias)
        x_new, y = out if keep_sum else (None, out)
        return jnp.sum(jnp.sin(y.astype(jnp.float32)) * weight_y) + (
            0.0 if x_new is None else jnp.sum(x_new.astype(jnp.float32) * weight_sum))
    return loss


def max_relative(a, b):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return float(np.abs(a - b).max() / np.abs(b).max())


def assert_kernel_matches_the_two_pass_layer_norm_in_fp32(keep_sum, with_delta):
    """Values and gradients of the kernel as tiled now against reference() at 1e-6."""
    x, delta, scale, bias, w_sum, w_y = inputs()
    delta = delta if with_delta else None
    kernel = lambda *a: fused_add_layer_norm(*a, EPS, jnp.float32, keep_sum)
    plain = lambda *a: reference(*a, jnp.float32, keep_sum)
    for ours, expected in zip(jax.tree.leaves(jax.jit(kernel)(x, delta, scale, bias)),
                              jax.tree.leaves(plain(x, delta, scale, bias))):
        assert max_relative(ours, expected) < 1e-6
    argnums = (0, 1, 2, 3) if with_delta else (0, 2, 3)
    ours, expected = (jax.jit(jax.grad(weighted(f, keep_sum, w_sum, w_y), argnums))(x, delta, scale, bias)
                      for f in (kernel, plain))
    for name, a, b in zip("x delta scale bias".split() if with_delta else "x scale bias".split(), ours, expected):
        assert max_relative(a, b) < 1e-6, name


@pytest.mark.parametrize("keep_sum", [True, False])
@pytest.mark.parametrize("with_delta", [True, False])
def test_kernel_matches_the_two_pass_layer_norm_and_its_gradients_in_fp32(keep_sum, with_delta):
    assert_kernel_matches_the_two_pass_layer_norm_in_fp32(keep_sum, with_delta)


@pytest.mark.parametrize("tiles", [(64, 4, 4), (16, 1, 4), (256, 16, 4), (8, 8, 1)])
def test_kernel_retiled_as_the_benchmarks_retile_it_gives_the_same_values_and_gradients(tiles, monkeypatch):
    """bench_variants.py times other tilings (ROWS, CHUNK, WARPS) of the kernel: each must stay exact. (256 rows
    a program: one program for all 150 rows, which a kernel still tiled by 64 would not cover.)"""
    for name, value in zip(("ROWS", "CHUNK", "WARPS"), tiles):
        monkeypatch.setattr(layer_norm_kernel, name, value)
    assert_kernel_matches_the_two_pass_layer_norm_in_fp32(keep_sum=True, with_delta=True)
    x, delta, scale, bias, _, w_y = inputs()
    _, _, mean, rstd = layer_norm_kernel.forward(x, delta, scale, bias, EPS, jnp.float32, interpret=True)
    d_scale_per_program = layer_norm_kernel.backward(x, w_y, mean, rstd, None, scale, None, interpret=True)[2]
    assert d_scale_per_program.shape == (-(-150 // tiles[0]), 48)  # one row of sums per program: ROWS took


def test_kernel_in_mixed_precision_keeps_each_dtype_and_matches_xla():
    """The training layout: a float32 stream, bf16 deltas (sub-block outputs) and a bf16 LayerNorm output."""
    x, delta, scale, bias, w_sum, w_y = inputs(jnp.float32, jnp.bfloat16)
    kernel = lambda *a: fused_add_layer_norm(*a, EPS, jnp.bfloat16)
    plain = lambda *a: reference(*a, jnp.bfloat16)
    (x_new, y), (x_ref, y_ref) = jax.jit(kernel)(x, delta, scale, bias), plain(x, delta, scale, bias)
    assert (x_new.dtype, y.dtype) == (jnp.float32, jnp.bfloat16)
    assert max_relative(x_new, x_ref) < 1e-7 and max_relative(y, y_ref) < 1e-2  # y: one bf16 rounding apart
    grads = [jax.jit(jax.grad(weighted(f, True, w_sum, w_y), (0, 1, 2, 3)))(x, delta, scale, bias)
             for f in (kernel, plain)]
    assert [g.dtype for g in grads[0]] == [jnp.float32, jnp.bfloat16, jnp.float32, jnp.float32]
    assert np.array_equal(grads[0][1], grads[0][0].astype(jnp.bfloat16))  # one gradient, in each one's dtype
    for a, b in zip(*grads):
        assert max_relative(a, b) < 1e-2


def test_kernel_with_a_bf16_stream_rounds_the_sum_as_the_unfused_add():
    x, delta, scale, bias, w_sum, w_y = inputs(jnp.bfloat16, jnp.bfloat16)
    kernel = lambda *a: fused_add_layer_norm(*a, EPS, jnp.bfloat16)
    plain = lambda *a: reference(*a, jnp.bfloat16)
    (x_new, y), (x_ref, y_ref) = jax.jit(kernel)(x, delta, scale, bias), plain(x, delta, scale, bias)
    assert x_new.dtype == jnp.bfloat16 and np.array_equal(x_new, x_ref)
    assert max_relative(y, y_ref) < 1e-2
    grads = [jax.jit(jax.grad(weighted(f, True, w_sum, w_y), (0, 1, 2, 3)))(x, delta, scale, bias)
             for f in (kernel, plain)]
    assert [g.dtype for g in grads[0]] == [jnp.bfloat16, jnp.bfloat16, jnp.float32, jnp.float32]
    for a, b in zip(*grads):
        assert max_relative(a, b) < 2e-2


@pytest.mark.parametrize("keep_sum", [True, False])
def test_xla_path_matches_the_two_pass_layer_norm_and_its_gradients_with_flax_parameter_names(keep_sum):
    x, delta, scale, bias, w_sum, w_y = inputs()
    for x_dtype, y_dtype in ((jnp.float32, jnp.float32), (jnp.float32, jnp.bfloat16), (jnp.bfloat16, jnp.bfloat16)):
        ours = AddLayerNorm(EPS, y_dtype)
        params = ours.init(jax.random.key(0), x.astype(x_dtype), delta)["params"]
        assert jax.tree.map(jnp.shape, params) == {"scale": (48,), "bias": (48,)}  # no submodule in the path
        assert jax.tree.map(jnp.shape, AddLayerNorm(EPS, y_dtype, fused=True).init(
            jax.random.key(0), x.astype(x_dtype), delta)["params"]) == {"scale": (48,), "bias": (48,)}
        xla = lambda x, delta, scale, bias: ours.apply({"params": {"scale": scale, "bias": bias}}, x, delta,
                                                       keep_sum=keep_sum)
        plain = lambda *a: reference(*a, y_dtype, keep_sum)
        args = (x.astype(x_dtype), delta, scale, bias)
        out, expected = jax.jit(xla)(*args), plain(*args)
        if keep_sum:
            assert np.array_equal(out[0], expected[0])  # the add is the add
        tolerance = 1e-6 if y_dtype == jnp.float32 else 1e-2
        assert max_relative(jax.tree.leaves(out)[-1], jax.tree.leaves(expected)[-1]) < tolerance
        grads, expected_grads = (jax.jit(jax.grad(weighted(f, keep_sum, w_sum, w_y), (0, 1, 2, 3)))(*args)
                                 for f in (xla, plain))
        assert [g.dtype for g in grads] == [g.dtype for g in expected_grads]
        for name, a, b in zip("x delta scale bias".split(), grads, expected_grads):
            assert max_relative(a, b) < (1e-6 if x_dtype == y_dtype == jnp.float32 else 2e-2), name


def test_xla_path_keeps_fp32_digits_where_the_stream_has_a_large_common_offset():
    """The variance in two passes: E[x^2] - E[x]^2 (flax's fast variance) was 1.3e-4 off here (mean/std ~ 30)."""
    x, _, scale, bias, _, _ = inputs()
    x = 0.05 * x + 3.0
    x64 = np.asarray(x, np.float64)
    centered = x64 - x64.mean(-1, keepdims=True)
    expected = centered / np.sqrt((centered**2).mean(-1, keepdims=True) + EPS) * np.asarray(scale) + np.asarray(bias)
    y = AddLayerNorm(EPS, jnp.float32).apply({"params": {"scale": scale, "bias": bias}}, x, keep_sum=False)
    assert max_relative(y, expected) < 1e-5


def test_fused_norm_model_has_the_same_params_logits_and_gradients():
    config = GPT2Config(vocab_size=101, n_positions=40, n_embd=20, n_layer=2, n_head=5, n_inner=36)
    ids = jnp.asarray(np.random.RandomState(3).randint(0, config.vocab_size, (2, 11)))
    plain, fused = GPT2(config), GPT2(config, fused_norm=True)
    params = plain.init(jax.random.key(1), ids)["params"]
    assert jax.tree.all(jax.tree.map(np.array_equal, params, fused.init(jax.random.key(1), ids)["params"]))
    params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.key(2), p.shape), params)  # LNs too
    assert max_relative(fused.apply({"params": params}, ids), plain.apply({"params": params}, ids)) < 1e-5

    def loss(model, params):
        return jnp.mean(jax.nn.log_softmax(model.apply({"params": params}, ids))[..., 0] ** 2)

    grads = [jax.jit(jax.grad(loss, 1), static_argnums=0)(model, params) for model in (plain, fused)]
    assert jax.tree.all(jax.tree.map(lambda a, b: max_relative(a, b) < 1e-5, *grads))
    assert "pallas_call" in str(jax.make_jaxpr(fused.apply)({"params": params}, ids))


def test_kernel_runs_per_device_under_a_mesh():
    """Each device normalises its own rows; the scale's and bias's gradients are summed over all of them."""
    x, delta, scale, bias, w_sum, w_y = inputs(jnp.float32, jnp.bfloat16, shape=(4, 20, 48))
    mesh = sharding.make_mesh(1, jax.devices()[:4])
    batch = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(mesh.axis_names))
    for delta in (delta, None):  # the first block's ln_1 has nothing to add
        loss = weighted(lambda *a: fused_add_layer_norm(*a, EPS, jnp.float32), True, w_sum, w_y)
        argnums = (0, 1, 2, 3) if delta is not None else (0, 2, 3)
        alone = jax.jit(jax.grad(loss, argnums))(x, delta, scale, bias)
        with jax.set_mesh(mesh):
            sharded_delta = None if delta is None else jax.device_put(delta, batch)
            sharded = jax.jit(jax.grad(loss, argnums))(jax.device_put(x, batch), sharded_delta, scale, bias)
            assert "shard_map" in str(jax.make_jaxpr(jax.grad(loss, argnums))(x, delta, scale, bias))
        for a, b in zip(sharded, alone):
            assert max_relative(a, b) < 1e-6


@pytest.mark.parametrize("fused", [False, True])
def test_remat_blocks_keep_only_the_stream_for_the_backward_pass(fused):
    """A remat block keeps its inputs: the stream alone (the last block's output is added before it), so
    remat's memory is one fp32 [B, T, D] a block, as before the add moved into the LayerNorm (not also
    the bf16 block output)."""
    config = GPT2Config(vocab_size=101, n_positions=40, n_embd=20, n_layer=3, n_head=5, n_inner=36)
    ids = jnp.asarray(np.random.RandomState(3).randint(0, config.vocab_size, (2, 11)))
    model = GPT2(config, dtype=jnp.bfloat16, remat=True, fused_norm=fused)
    params = model.init(jax.random.key(1), ids)["params"]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        print_saved_residuals(lambda p: model.apply({"params": p}, ids, method=GPT2.hidden).sum(), params)
    kept = [line for line in printed.getvalue().splitlines() if "[2,11,20]" in line]
    assert not [line for line in kept if line.startswith("bf16")]  # no block output kept
    assert [line.split()[0] for line in kept if "GPT2._forward" in line] == ["f32[2,11,20]"] * config.n_layer
