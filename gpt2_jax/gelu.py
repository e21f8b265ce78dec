"""GPT-2's GELU ("gelu_new", the tanh form) with a backward pass that keeps only its input.

Autodiff of `jax.nn.gelu` saves the tanh and three other intermediates for the backward pass;
on a GPU that is one more [tokens, 4 x n_embd] tensor written and read per layer, and a GELU
kernel of its own. With only the input saved, XLA folds the GELU into the MLP's first matmul
(cuBLAS's GELU epilogue, which also writes the input for the backward) and recomputes the tanh
inside the backward's fused kernel, for free: the values are the same. A custom VJP is reverse-mode
only: `jax.jvp`/`jax.jacfwd` through the model raise (a custom JVP would save the slope instead of x,
and XLA could no longer fold the GELU into the matmul).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


@jax.custom_vjp
def gelu_tanh(x):
    """jax.nn.gelu(x, approximate=True), differentiable, with only x kept for the gradient."""
    return jax.nn.gelu(x, approximate=True)


def _gelu_tanh_forward(x):
    return gelu_tanh(x), x


def _gelu_tanh_backward(x, d_out):
    x = x.astype(jnp.promote_types(x.dtype, jnp.float32))  # in fp32 inside the fused kernel
    inner = math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)
    tanh = jnp.tanh(inner)
    d_inner = math.sqrt(2 / math.pi) * (1 + 3 * 0.044715 * x**2)
    slope = 0.5 * (1 + tanh) + 0.5 * x * (1 - tanh**2) * d_inner
    return ((d_out * slope).astype(d_out.dtype),)


gelu_tanh.defvjp(_gelu_tanh_forward, _gelu_tanh_backward)
