"""Causal self-attention over [batch, time, heads, head_dim] arrays, by the kernel asked for.

`jax.nn.dot_product_attention` does the work ("xla", or "cudnn": flash attention on NVIDIA
GPUs), or the Pallas splash-attention kernel that ships with JAX ("pallas": TPUs), or XLA's ops
a chunk of queries at a time ("chunked", and None: `chunked_attention`). accelerator.py picks the
fastest exact one per platform.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

KERNELS = ("chunked", "xla", "cudnn", "pallas")  # and None: "chunked"
QUERY_CHUNK = 128  # queries per chunk of `chunked_attention` (64: 0.87x, 256: 0.98x the speed at T=1,024, CPU)


def attend(q_BxTxHxK, k_BxSxHxK, v_BxSxHxK, start, implementation: str | None):
    """Causal attention [B, T, H, K] of T queries at positions start..start+T-1 over S keys at 0..S-1.

    `start` None means no cache (T == S): plain causal attention, which every kernel runs;
    decoding from a cache (a mask over the keys) always runs XLA's or cuDNN's.
    """
    if implementation is not None and implementation not in KERNELS:  # an unknown name is an error, not a silent "xla"
        raise ValueError(f"attention implementation {implementation!r}: one of {KERNELS} or None "
                         "(accelerator.model_kernels picks one for a platform)")
    T, S = q_BxTxHxK.shape[1], k_BxSxHxK.shape[1]
    if start is None and implementation == "pallas":
        return splash_attention(q_BxTxHxK, k_BxSxHxK, v_BxSxHxK)
    if start is None and implementation in (None, "chunked"):
        return chunked_attention(q_BxTxHxK, k_BxSxHxK, v_BxSxHxK)
    if start is None:
        return jax.nn.dot_product_attention(
            q_BxTxHxK, k_BxSxHxK, v_BxSxHxK, is_causal=True, implementation=implementation
        )
    implementation = "cudnn" if implementation == "cudnn" else "xla"  # decoding: XLA's unless cuDNN's
    q_positions_T = start + jnp.arange(T)
    mask_TxS = jnp.arange(S)[None, :] <= q_positions_T[:, None]
    return jax.nn.dot_product_attention(
        q_BxTxHxK, k_BxSxHxK, v_BxSxHxK, mask=mask_TxS[None, None], implementation=implementation
    )


def chunked_attention(q_BxTxHxK, k_BxTxHxK, v_BxTxHxK, chunk: int | None = None):
    """Causal attention by XLA's ops, `chunk` (QUERY_CHUNK) queries at a time, each chunk over the keys it can see.

    The values of `jax.nn.dot_product_attention`'s "xla" (the same fp32 scores, scale, mask and softmax),
    without its masked upper half of the [T, T] scores, nor all of the rest at once (the backward pass keeps each
    chunk's exps: half the square): at [8, 1,024, 12, 64] a CPU computes it, and its gradient, 2.2-2.4x as fast
    (docs/benchmarks.md). Exact, not an approximation: each chunk's softmax runs over all the keys it sees (no
    running maximum); its exps are normalized after the weighted sum of the values, which is one pass fewer over
    them. JAX's own attentions either compute the whole square (XLA) or are a GPU's or TPU's kernel (interpreted,
    slowly, elsewhere): hence this code.
    """
    B, T, H, K = q_BxTxHxK.shape
    chunk = chunk or QUERY_CHUNK
    if T <= chunk:
        return jax.nn.dot_product_attention(q_BxTxHxK, k_BxTxHxK, v_BxTxHxK, is_causal=True, implementation="xla")
    outputs = []
    for first in range(0, T, chunk):  # unrolled: each chunk sees a different number of keys
        end = min(first + chunk, T)
        scores_BxHxCxS = jnp.einsum("bchk,bshk->bhcs", q_BxTxHxK[:, first:end], k_BxTxHxK[:, :end],
                                    preferred_element_type=jnp.float32) * (1.0 / math.sqrt(K))
        sees_CxS = jnp.arange(end)[None, :] <= jnp.arange(first, end)[:, None]
        scores_BxHxCxS = jnp.where(sees_CxS, scores_BxHxCxS, -jnp.inf)
        exps_BxHxCxS = jnp.exp(scores_BxHxCxS - jnp.max(scores_BxHxCxS, axis=-1, keepdims=True))
        sums_BxCxH = jnp.swapaxes(jnp.sum(exps_BxHxCxS, axis=-1), 1, 2)
        out_BxCxHxK = jnp.einsum("bhcs,bshk->bchk", exps_BxHxCxS.astype(v_BxTxHxK.dtype), v_BxTxHxK[:, :end],
                                 preferred_element_type=jnp.float32)
        outputs.append((out_BxCxHxK / sums_BxCxH[..., None]).astype(q_BxTxHxK.dtype))
    return jnp.concatenate(outputs, axis=1)


def splash_attention(q_BxTxHxK, k_BxTxHxK, v_BxTxHxK):
    """Causal attention with the Pallas splash-attention kernel that ships with JAX (TPUs; interpreted elsewhere).

    A Pallas kernel is one opaque call that XLA cannot split over devices: under a mesh set with
    `jax.set_mesh` (train.py does), each device runs it on its own slice of the batch, which
    training splits over every mesh axis.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or q_BxTxHxK.shape[0] % mesh.size:
        return _splash_attention(q_BxTxHxK, k_BxTxHxK, v_BxTxHxK)
    batch = jax.sharding.PartitionSpec(mesh.axis_names)
    return jax.shard_map(_splash_attention, mesh=mesh, in_specs=(batch,) * 3, out_specs=batch, check_vma=False)(
        q_BxTxHxK, k_BxTxHxK, v_BxTxHxK)


def _splash_attention(q_BxTxHxK, k_BxTxHxK, v_BxTxHxK):
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as masks

    B, T, H, K = q_BxTxHxK.shape
    padded = -(-T // 128) * 128  # its blocks are multiples of 128; causality keeps padded keys unseen
    block = next(b for b in (512, 256, 128) if padded % b == 0)
    sizes = splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                              block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)
    kernel = splash.make_splash_mha_single_device(
        masks.MultiHeadMask([masks.CausalMask((padded, padded))] * H), block_sizes=sizes,
        interpret=jax.devices()[0].platform != "tpu")
    q_BxHxTxK, k_BxHxTxK, v_BxHxTxK = (
        jnp.pad(jnp.swapaxes(t, 1, 2), ((0, 0), (0, 0), (0, padded - T), (0, 0)))
        for t in (q_BxTxHxK * (1.0 / math.sqrt(K)), k_BxTxHxK, v_BxTxHxK)  # the kernel does not scale q
    )
    return jnp.swapaxes(jax.vmap(kernel)(q_BxHxTxK, k_BxHxTxK, v_BxHxTxK)[:, :, :T], 1, 2)
