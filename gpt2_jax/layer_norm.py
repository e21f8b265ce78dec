"""A residual add and the LayerNorm after it: XLA's ops, or one Pallas kernel (layer_norm_kernel.py).

GPT-2's pre-LN blocks read the residual stream only through a LayerNorm right after an add:
x += attention(ln_1(x)); x += mlp(ln_2(x)); ln_f(x). Written as (x, y) = AddLayerNorm(x, delta),
each add and the norm after it are one operation, which the fused kernel runs in one pass over
the stream (forward and backward). Its parameters are flax's LayerNorm's (`scale`, `bias`), so
checkpoints and transformers' names do not change with the choice.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gpt2_jax import layer_norm_kernel


class AddLayerNorm(nn.Module):
    """(x + delta, LayerNorm(x + delta) in `dtype`), delta cast to x's dtype; delta None: no add.

    fused: the Pallas kernel (NVIDIA GPUs; interpreted elsewhere, for tests); else XLA's ops (`layer_norm`).
    Either way the parameters are `scale` and `bias`, as flax's LayerNorm names them.
    """

    epsilon: float
    dtype: Any
    fused: bool = False

    @nn.compact
    def __call__(self, x_BxTxD, delta_BxTxD=None, keep_sum: bool = True):
        D = x_BxTxD.shape[-1]
        scale_D = self.param("scale", nn.initializers.ones, (D,))
        bias_D = self.param("bias", nn.initializers.zeros, (D,))
        if self.fused:
            return fused_add_layer_norm(x_BxTxD, delta_BxTxD, scale_D, bias_D, self.epsilon, self.dtype, keep_sum)
        if delta_BxTxD is not None:
            x_BxTxD = x_BxTxD + delta_BxTxD.astype(x_BxTxD.dtype)
        y_BxTxD = layer_norm(x_BxTxD, scale_D, bias_D, self.epsilon, jnp.dtype(self.dtype))
        return (x_BxTxD, y_BxTxD) if keep_sum else y_BxTxD


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def layer_norm(x, scale, bias, epsilon: float, dtype):
    """LayerNorm over the last axis in float32, the result in `dtype`: the variance in two passes, as PyTorch's
    (flax's one-pass E[x^2] - E[x]^2 loses fp32 digits as |mean| / std grows: 5e-4 off transformers' logits at a
    stream offset 50x its spread), and the gradient written out (faster on a CPU than autodiff of flax's)."""
    return _layer_norm_forward(x, scale, bias, epsilon, dtype)[0]


def _layer_norm_forward(x, scale, bias, epsilon, dtype):
    mean = jnp.mean(x, -1, keepdims=True, dtype=jnp.float32)
    centered = x.astype(jnp.float32) - mean
    rstd = jax.lax.rsqrt(jnp.mean(jnp.square(centered), -1, keepdims=True) + epsilon)
    y = centered * (rstd * scale) + bias
    return y.astype(dtype), (x, mean, rstd, scale)


def _layer_norm_backward(epsilon, dtype, saved, dy):
    x, mean, rstd, scale = saved  # x is the residual stream, kept anyway: two floats a row are extra
    x_hat = (x.astype(jnp.float32) - mean) * rstd
    dy = dy.astype(jnp.float32)
    g = dy * scale
    dx = rstd * (g - jnp.mean(g, -1, keepdims=True) - x_hat * jnp.mean(g * x_hat, -1, keepdims=True))
    rows = tuple(range(x.ndim - 1))
    return dx.astype(x.dtype), *(jnp.sum(d, rows).astype(scale.dtype) for d in (dy * x_hat, dy))  # scale's, bias's


layer_norm.defvjp(_layer_norm_forward, _layer_norm_backward)


def fused_add_layer_norm(x, delta, scale, bias, epsilon: float, dtype, keep_sum: bool = True):
    """AddLayerNorm's fused path: layer_norm_kernel.py's kernels, differentiable in reverse mode.

    x, delta: [batch, ..., D] (delta None: no add); scale, bias: [D]. x + delta is computed in float32
    and rounded to x's dtype (for the model's bf16 or fp32 deltas, what x + delta.astype(x.dtype) gives).
    """
    delta_dtype = None if delta is None else jnp.dtype(delta.dtype)
    return _fused(x, delta, scale, bias, epsilon, jnp.dtype(dtype), keep_sum, delta_dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7))
def _fused(x, delta, scale, bias, epsilon, dtype, keep_sum, delta_dtype):
    return _fused_forward(x, delta, scale, bias, epsilon, dtype, keep_sum, delta_dtype)[0]


def _fused_forward(x, delta, scale, bias, epsilon, dtype, keep_sum, delta_dtype):
    kernel = functools.partial(layer_norm_kernel.forward, eps=epsilon, y_dtype=dtype)
    x_new, y, mean, rstd = _on_each_device(kernel, (x, delta), (scale, bias))
    return ((x_new, y) if keep_sum else y), (x_new, mean, rstd, scale)


def _fused_backward(epsilon, dtype, keep_sum, delta_dtype, saved, d_out):
    x_new, mean, rstd, scale = saved
    d_x_new, dy = d_out if keep_sum else (None, d_out)
    kernel = functools.partial(layer_norm_kernel.backward, delta_dtype=delta_dtype)
    dx, d_delta, d_scale, d_bias = _on_each_device(kernel, (x_new, dy, mean, rstd, d_x_new), (scale,))
    return dx, d_delta, d_scale.sum(0), d_bias.sum(0)


_fused.defvjp(_fused_forward, _fused_backward)


def _on_each_device(kernel, batched, shared):
    """kernel(*batched, *shared, interpret=...) as compiled for its platform: the Triton kernel on GPUs,
    Pallas's interpreter elsewhere. Under a mesh, on each device's slice of the batch (a Pallas call is
    opaque to XLA's partitioner); all four results split like the batch, so the per-program sums of
    the devices are concatenated. None in `batched` stays None."""
    present = [a for a in batched if a is not None]

    def local(*arrays):
        given = iter(arrays[:len(present)])
        args = [None if a is None else next(given) for a in batched] + list(arrays[len(present):])
        triton = functools.partial(kernel, *args, interpret=False)  # (Pallas lowers Triton for ROCm too: untried)
        return jax.lax.platform_dependent(cuda=triton, rocm=triton,
                                          default=functools.partial(kernel, *args, interpret=True))

    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or batched[0].shape[0] % mesh.size:
        return local(*present, *shared)
    rows, whole = jax.sharding.PartitionSpec(mesh.axis_names), jax.sharding.PartitionSpec()
    return jax.shard_map(local, mesh=mesh, in_specs=(rows,) * len(present) + (whole,) * len(shared),
                         out_specs=(rows,) * 4, check_vma=False)(*present, *shared)
