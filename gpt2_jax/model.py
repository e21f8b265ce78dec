"""GPT-2 as Flax linen modules: logits are a pure function of (params, token ids).

Decoder-only transformer with GPT-2's changes to "Attention is all you need": pre-LN
sub-blocks, a final LayerNorm, learned positions, tanh GELU, and an output head tied to
the token embedding. Module and parameter names are transformers' (`wte`, `h_0/attn/c_attn`,
`ln_f`, ...) so converting a checkpoint is a rename of keys.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gpt2_jax.attention import attend
from gpt2_jax.config import GPT2Config
from gpt2_jax.gelu import gelu_tanh
from gpt2_jax.kv_cache import KVCache, check_fits, positions_held
from gpt2_jax.layer_norm import AddLayerNorm


def dense(config: GPT2Config, features: int, dtype: Any, name: str, residual: bool = False) -> nn.Dense:
    """A Dense with GPT-2's init; HF's Conv1D weight is [in, out] like this kernel."""
    std = config.initializer_range
    if residual:  # scale by 1/sqrt(2*n_layer): each block adds two residual branches
        std /= math.sqrt(2 * config.n_layer)
    return nn.Dense(features, dtype=dtype, kernel_init=nn.initializers.normal(std), name=name)


class QKV(nn.Module):
    """c_attn: queries, keys and values from one [D, 3D] kernel and bias (transformers' layout).

    split: three matmuls, one per [D, D] third, each writing the dense [B, T, D] that cuDNN's
    attention reads, instead of one matmul whose [B, T, 3D] output XLA copies apart (and
    concatenates again in the backward pass).
    """

    config: GPT2Config
    dtype: Any
    split: bool

    @nn.compact
    def __call__(self, x_BxTxD):
        D = x_BxTxD.shape[-1]
        kernel_Dx3D = self.param("kernel", nn.initializers.normal(self.config.initializer_range), (D, 3 * D))
        bias_3D = self.param("bias", nn.initializers.zeros, (3 * D,))
        x_BxTxD, kernel_Dx3D, bias_3D = (a.astype(self.dtype) for a in (x_BxTxD, kernel_Dx3D, bias_3D))
        if not self.split:
            return jnp.split(jnp.einsum("btd,de->bte", x_BxTxD, kernel_Dx3D) + bias_3D, 3, axis=-1)
        return [jnp.einsum("btd,de->bte", x_BxTxD, kernel_Dx3D[:, i * D:(i + 1) * D]) + bias_3D[i * D:(i + 1) * D]
                for i in range(3)]


class Attention(nn.Module):
    """Causal self-attention [B, T, D] -> ([B, T, D], KV cache: this step's keys and values written at `start`)."""

    config: GPT2Config
    dtype: Any
    attention_impl: str | None
    split_qkv: bool

    @nn.compact
    def __call__(self, x_BxTxD, cache, start):
        c = self.config
        B, T, D = x_BxTxD.shape
        qkv = QKV(c, self.dtype, self.split_qkv, name="c_attn")(x_BxTxD)
        q, k, v = (t.reshape(B, T, c.n_head, c.head_dim) for t in qkv)
        if cache is not None:  # write this step's keys/values at `start`, attend over all
            k = jax.lax.dynamic_update_slice(cache["k"], k.astype(cache["k"].dtype), (0, start, 0, 0))
            v = jax.lax.dynamic_update_slice(cache["v"], v.astype(cache["v"].dtype), (0, start, 0, 0))
            cache = {"k": k, "v": v}
            k, v = k.astype(self.dtype), v.astype(self.dtype)
        out_BxTxHxK = attend(q, k, v, None if cache is None else start, self.attention_impl)
        out_BxTxD = out_BxTxHxK.reshape(B, T, D)
        return dense(c, D, self.dtype, residual=True, name="c_proj")(out_BxTxD), cache


class MLP(nn.Module):
    config: GPT2Config
    dtype: Any

    @nn.compact
    def __call__(self, x_BxTxD):
        h_BxTxF = dense(self.config, self.config.mlp_width, self.dtype, name="c_fc")(x_BxTxD)
        h_BxTxF = gelu_tanh(h_BxTxF)
        return dense(self.config, x_BxTxD.shape[-1], self.dtype, residual=True, name="c_proj")(h_BxTxF)


class Block(nn.Module):
    config: GPT2Config
    dtype: Any
    attention_impl: str | None
    split_qkv: bool
    fused_norm: bool

    @nn.compact
    def __call__(self, x_BxTxD, delta_BxTxD, cache, start):
        """Adds the last block's output `delta` to the residual stream `x` (in x's dtype) and returns
        (the stream, this block's output for the next to add, the cache). Pre-LN: each sub-block reads
        a LayerNorm of the stream, taken in the same step as the add before it (layer_norm.py)."""
        norm = lambda name: AddLayerNorm(self.config.layer_norm_epsilon, self.dtype, self.fused_norm, name=name)
        x_BxTxD, h_BxTxD = norm("ln_1")(x_BxTxD, delta_BxTxD)
        attn_out, cache = Attention(self.config, self.dtype, self.attention_impl, self.split_qkv, name="attn")(
            h_BxTxD, cache, start)
        x_BxTxD, h_BxTxD = norm("ln_2")(x_BxTxD, attn_out)
        return x_BxTxD, MLP(self.config, self.dtype, name="mlp")(h_BxTxD), cache


class GPT2(nn.Module):
    """GPT-2 language model.

    Attributes:
      config: the shape (GPT2Config).
      dtype: compute dtype (float32 or bfloat16); params stay float32.
      residual_dtype: the residual stream's dtype: float32 (as nanoGPT's under autocast), or
        bfloat16 to halve the memory traffic of the adds and LayerNorms around it (MaxText's way).
      vocab_pad_multiple: round the embedding's rows up to a multiple of this (64 gives
        50304) for faster matmuls; logits are always returned at `config.vocab_size`.
      attention_impl: "xla"/"cudnn" for `jax.nn.dot_product_attention`, "pallas" for the splash-attention
        kernel, None/"chunked" for XLA's ops by chunks of queries (attention.py; accelerator.py picks one per
        platform for training).
      remat: recompute each block's activations in the backward pass (saves memory).
      split_qkv: queries, keys and values as three matmuls rather than one split by copying (QKV).
      fused_norm: each residual add and the LayerNorm after it as one Pallas kernel (NVIDIA GPUs).
    """

    config: GPT2Config
    dtype: Any = jnp.float32
    vocab_pad_multiple: int = 1
    attention_impl: str | None = None
    remat: bool = False
    residual_dtype: Any = jnp.float32
    split_qkv: bool = False
    fused_norm: bool = False

    def setup(self):
        c = self.config
        if not isinstance(self.vocab_pad_multiple, numbers.Integral) or self.vocab_pad_multiple < 1:
            raise ValueError(f"vocab_pad_multiple={self.vocab_pad_multiple!r} must be a positive integer")
        padded_vocab = -(-c.vocab_size // self.vocab_pad_multiple) * self.vocab_pad_multiple
        embed_init = nn.initializers.normal(c.initializer_range)
        self.wte = nn.Embed(padded_vocab, c.n_embd, embedding_init=embed_init)
        self.wpe = nn.Embed(c.n_positions, c.n_embd, embedding_init=embed_init)
        block = nn.remat(Block) if self.remat else Block
        self.h = [block(c, self.dtype, self.attention_impl, self.split_qkv, self.fused_norm)
                  for _ in range(c.n_layer)]  # h_0, h_1, ...
        self.ln_f = AddLayerNorm(c.layer_norm_epsilon, self.dtype, self.fused_norm)

    def __call__(self, input_ids_BxT):
        """Logits [B, T, vocab_size] (float32) for token ids [B, T]."""
        return self.head(self.hidden(input_ids_BxT))

    def hidden(self, input_ids_BxT):
        """The final hidden states [B, T, n_embd] (after ln_f, in the compute dtype): what the head reads.

        Training and evaluation feed these to loss.py with the embedding, which never builds
        the whole [B, T, vocab] logits.
        """
        return self._forward(input_ids_BxT, None, None)[0]

    def decode(self, input_ids_BxT, cache: KVCache, start, last_only: bool = False):
        """Logits for ids at positions start..start+T-1, reading and extending `cache`.

        Returns (logits [B, T, vocab_size] float32, or [B, 1, vocab_size] of the last position
        with `last_only` (what a prompt's pass needs), and the updated cache). Positions past the
        cache or past n_positions raise a ValueError, or give NaN logits where `start` is traced (inside jit).
        """
        x_BxTxD, cache = self._forward(input_ids_BxT, cache, start)
        return self.head(x_BxTxD[:, -1:] if last_only else x_BxTxD), cache

    def _forward(self, input_ids_BxT, cache, start):
        if input_ids_BxT.ndim != 2 or (start is None and input_ids_BxT.shape[1] > self.config.n_positions):  # NaN
            raise ValueError(f"ids of shape {input_ids_BxT.shape}: [B, T], T <= {self.config.n_positions} positions")
        T = input_ids_BxT.shape[1]
        positions_T = jnp.arange(T) if start is None else start + jnp.arange(T)
        if cache is not None:  # the cache writes at start clamped into [0, max_len - T]: else wrong logits
            check_fits(cache, start, T, self.config.n_positions)
            held = positions_held(cache, self.config.n_positions)
            fits = (start >= 0) & (start + T <= held)  # a traced start cannot raise: NaN logits, not wrong ones
            positions_T = jnp.where(fits, positions_T, self.config.n_positions)  # past wpe: Embed's take gives NaN
        x_BxTxD = (self.wte(input_ids_BxT) + self.wpe(positions_T)[None]).astype(self.residual_dtype)
        delta_BxTxD = None  # the last sub-block's output, not yet added to the stream (layer_norm.AddLayerNorm)
        new_cache = None if cache is None else []
        for i, block in enumerate(self.h):
            if self.remat and delta_BxTxD is not None:  # a remat block keeps its inputs: give it the stream alone
                x_BxTxD, delta_BxTxD = x_BxTxD + delta_BxTxD.astype(x_BxTxD.dtype), None
            x_BxTxD, delta_BxTxD, layer_cache = block(x_BxTxD, delta_BxTxD, None if cache is None else cache[i], start)
            if cache is not None:
                new_cache.append(layer_cache)
        return self.ln_f(x_BxTxD, delta_BxTxD, keep_sum=False), new_cache

    def head(self, x_BxTxD):
        """Tied head: logits [B, T, vocab_size] (fp32) = x @ wte^T in the compute dtype, padding cut from the logits,
        not the embedding (cutting the [V, D] embedding copies all of it at every decoding step)."""
        logits_BxTxV = jnp.einsum("btd,vd->btv", x_BxTxD, self.wte.embedding.astype(self.dtype))
        return logits_BxTxV[..., : self.config.vocab_size].astype(jnp.float32)
