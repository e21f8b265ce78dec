"""The residual add and the LayerNorm after it as one Pallas (Triton) kernel, forward and backward.

    x_new = x + delta;  y = (x_new - mean) / sqrt(var + eps) * scale + bias  (in y's dtype)

Written by XLA, each LayerNorm is two kernels forward (statistics, then normalize) that each read
the residual stream, and its backward is split into row reductions, column reductions and the
residual gradient's add, most reading the stream and the gradients again. Here a program owns
`ROWS` whole rows: forward reads x and delta once and writes x_new, y and each row's mean and
1/std; backward reads x_new, dy and x_new's gradient once and writes the gradient of x (and of
delta, in its dtype), with the scale's and bias's gradients summed per program and then over
programs by XLA (the only reduction across rows). Statistics in float32, the variance in two passes.

Triton kernels for NVIDIA GPUs (`interpret`: Pallas's interpreter, for CPUs). layer_norm.py makes
them differentiable and runs them on each device's rows under a mesh. Pallas's Triton backend is
deprecated since JAX 0.11 (docs/benchmarks.md says why it is used here, and what would replace it).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

# Rows per program, rows per step of its loop ([CHUNK, D] tiles in registers) and warps per program: a guess
# from ptxas's register counts, not yet timed (docs/benchmarks.md; scripts/bench_variants.py times others).
ROWS, CHUNK, WARPS = 64, 2, 4


def _tile(first_row, n_rows, n_cols, chunk_index):
    """The `chunk_index`-th [CHUNK, next_pow2(D)] tile from `first_row`: (row ids, column ids, mask)."""
    rows = first_row + chunk_index * CHUNK + jnp.arange(CHUNK)
    cols = jnp.arange(pl.next_power_of_2(n_cols))
    return rows, cols, (rows < n_rows)[:, None] & (cols < n_cols)[None, :]


def _load(ref, rows, cols, mask):
    return plgpu.load(ref.at[rows[:, None], cols[None, :]], mask=mask, other=0.0).astype(jnp.float32)


def _load_vector(ref, cols, n_cols):
    return plgpu.load(ref.at[cols], mask=cols < n_cols, other=0.0).astype(jnp.float32)


def _forward_kernel(x_ref, delta_ref, scale_ref, bias_ref, x_new_ref, y_ref, mean_ref, rstd_ref, *, eps):
    n_rows, n_cols = x_ref.shape
    program, cols = pl.program_id(0), jnp.arange(pl.next_power_of_2(n_cols))
    first_row = program * ROWS  # read here, outside the loops: Pallas's interpreter needs it so
    scale, bias = _load_vector(scale_ref, cols, n_cols), _load_vector(bias_ref, cols, n_cols)

    @pl.loop(0, ROWS // CHUNK)
    def _(i):
        rows, cols, mask = _tile(first_row, n_rows, n_cols, i)
        x = _load(x_ref, rows, cols, mask)
        if delta_ref is not None:  # rounded to the stream's dtype, as the unfused add is
            x = (x + _load(delta_ref, rows, cols, mask)).astype(x_new_ref.dtype)
            plgpu.store(x_new_ref.at[rows[:, None], cols[None, :]], x, mask=mask)
            x = x.astype(jnp.float32)
        mean = jnp.sum(x, axis=1) / n_cols
        centred = jnp.where(mask, x - mean[:, None], 0.0)
        rstd = jax.lax.rsqrt(jnp.sum(centred * centred, axis=1) / n_cols + eps)
        y = centred * rstd[:, None] * scale[None, :] + bias[None, :]
        plgpu.store(y_ref.at[rows[:, None], cols[None, :]], y.astype(y_ref.dtype), mask=mask)
        plgpu.store(mean_ref.at[rows], mean, mask=rows < n_rows)
        plgpu.store(rstd_ref.at[rows], rstd, mask=rows < n_rows)


def _backward_kernel(x_ref, dy_ref, mean_ref, rstd_ref, scale_ref, dx_new_ref,
                     dx_ref, ddelta_ref, dscale_ref, dbias_ref):
    n_rows, n_cols = x_ref.shape
    program, cols = pl.program_id(0), jnp.arange(pl.next_power_of_2(n_cols))
    first_row = program * ROWS
    scale = _load_vector(scale_ref, cols, n_cols)

    def chunk(i, sums):
        rows, cols, mask = _tile(first_row, n_rows, n_cols, i)
        mean = plgpu.load(mean_ref.at[rows], mask=rows < n_rows, other=0.0)
        rstd = plgpu.load(rstd_ref.at[rows], mask=rows < n_rows, other=0.0)
        x_hat = jnp.where(mask, (_load(x_ref, rows, cols, mask) - mean[:, None]) * rstd[:, None], 0.0)
        dy = _load(dy_ref, rows, cols, mask)
        g = dy * scale[None, :]
        dx = rstd[:, None] * (g - (jnp.sum(g, axis=1)[:, None] + x_hat * jnp.sum(g * x_hat, axis=1)[:, None]) / n_cols)
        if dx_new_ref is not None:  # the gradient that reached x_new along the residual stream
            dx = dx + _load(dx_new_ref, rows, cols, mask)
        plgpu.store(dx_ref.at[rows[:, None], cols[None, :]], dx.astype(dx_ref.dtype), mask=mask)
        if ddelta_ref is not None:
            plgpu.store(ddelta_ref.at[rows[:, None], cols[None, :]], dx.astype(ddelta_ref.dtype), mask=mask)
        return sums[0] + jnp.sum(dy * x_hat, axis=0), sums[1] + jnp.sum(dy, axis=0)

    zeros = jnp.zeros(cols.shape, jnp.float32)
    dscale, dbias = jax.lax.fori_loop(0, ROWS // CHUNK, chunk, (zeros, zeros))
    plgpu.store(dscale_ref.at[program, cols], dscale, mask=cols < n_cols)
    plgpu.store(dbias_ref.at[program, cols], dbias, mask=cols < n_cols)


def _call(kernel, name, args, out_shapes, interpret):
    """`kernel` over pl.cdiv(rows, ROWS) programs, `name` in profiles; None in `args` or `out_shapes` reaches
    it as a None ref."""
    given = [a for a in args if a is not None]
    wanted = [s for s in out_shapes if s is not None]

    def with_nones(*refs):
        inputs, outputs = iter(refs[:len(given)]), iter(refs[len(given):])
        kernel(*[None if a is None else next(inputs) for a in args],
               *[None if s is None else next(outputs) for s in out_shapes])

    results = iter(pl.pallas_call(with_nones, out_shape=wanted, grid=(pl.cdiv(args[0].shape[0], ROWS),), name=name,
                                  compiler_params=plgpu.CompilerParams(num_warps=WARPS), interpret=interpret)(*given))
    return [None if s is None else next(results) for s in out_shapes]


def forward(x, delta, scale_D, bias_D, eps: float, y_dtype, interpret: bool):
    """(x + delta in x's dtype, its LayerNorm in `y_dtype`, each row's mean and 1/std in float32).

    x, delta: [..., D] (delta None: no add, x itself is returned); scale, bias: [D]."""
    D, rows = x.shape[-1], x.shape[:-1]
    N = x.size // D
    shapes = [None if delta is None else jax.ShapeDtypeStruct((N, D), x.dtype), jax.ShapeDtypeStruct((N, D), y_dtype),
              jax.ShapeDtypeStruct((N,), jnp.float32), jax.ShapeDtypeStruct((N,), jnp.float32)]
    x_new, y, mean, rstd = _call(functools.partial(_forward_kernel, eps=eps), "add_layer_norm_forward",
                                 [x.reshape(N, D), None if delta is None else delta.reshape(N, D), scale_D, bias_D],
                                 shapes, interpret)
    return (x if x_new is None else x_new.reshape(x.shape)), y.reshape(x.shape), mean.reshape(rows), rstd.reshape(rows)


def backward(x_new, dy, mean, rstd, d_x_new, scale_D, delta_dtype, interpret: bool):
    """Gradients (of x, of delta in `delta_dtype` or None without one, the scale's and bias's sums per
    program [programs, D]) from forward's x_new, mean and rstd, y's gradient `dy`, and x_new's `d_x_new`
    (None: x_new was not used)."""
    D = x_new.shape[-1]
    N = x_new.size // D
    programs = pl.cdiv(N, ROWS)
    separate = delta_dtype is not None and delta_dtype != x_new.dtype  # else delta's gradient is x's
    shapes = [jax.ShapeDtypeStruct((N, D), x_new.dtype),
              jax.ShapeDtypeStruct((N, D), delta_dtype) if separate else None,
              jax.ShapeDtypeStruct((programs, D), jnp.float32), jax.ShapeDtypeStruct((programs, D), jnp.float32)]
    args = [x_new.reshape(N, D), dy.reshape(N, D), mean.reshape(N), rstd.reshape(N), scale_D,
            None if d_x_new is None else d_x_new.reshape(N, D)]
    dx, d_delta, d_scale, d_bias = _call(_backward_kernel, "add_layer_norm_backward", args, shapes, interpret)
    dx = dx.reshape(x_new.shape)
    d_delta = d_delta.reshape(x_new.shape) if separate else (dx if delta_dtype is not None else None)
    return dx, d_delta, d_scale, d_bias
