"""Next-token cross-entropy through GPT-2's tied head, a chunk of positions at a time.

The head (hidden states @ wte^T) and the cross-entropy are computed together, `chunk`
positions of every sequence at a time, so the [batch, time, vocab] logits (13 GB in fp32 for
GPT-2 124M at 64 x 1024) never exist at once. Training's `mean_cross_entropy` also computes
its gradient in the same pass (softmax minus one-hot, times the embedding and the hidden
states): nothing is recomputed in the backward pass, which only scales what was saved.
The padded vocabulary rows (model.py) take part in the matmuls, whose shapes stay aligned,
and are masked out of the softmax, so the losses are those of the real vocabulary.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

CHUNK_TOKENS = 8192  # tokens (batch x positions) per chunk: large matmuls, ~0.8 GB of logits for 50,304 rows
# token_losses' chunk on a CPU, in logits: 128 tokens of GPT-2's vocabulary (25 MB in fp32), which then stay in its
# caches between the passes (1.38x at 8 x 1,024; training's gradient is slower with chunks this small: each one
# adds to the whole [V, D] embedding gradient)
CPU_EVAL_CHUNK_LOGITS = 128 * 50304


def chunk_layout(batch: int, time: int, chunk_tokens: int = CHUNK_TOKENS) -> tuple[int, int]:
    """(chunks, positions per chunk): the fewest equal chunks with batch x positions <= chunk_tokens (at
    least one position each); time is padded up to chunks x positions, by fewer than `chunks` positions."""
    chunks = -(-time // max(1, chunk_tokens // batch))
    return chunks, -(-time // chunks)


def _chunks(a_BxTx_, chunks: int, positions: int):
    """[B, T, ...] -> [chunks, B, positions, ...], zero-padded along T: what lax.scan walks over."""
    B, T = a_BxTx_.shape[:2]
    padded = jnp.pad(a_BxTx_, [(0, 0), (0, chunks * positions - T)] + [(0, 0)] * (a_BxTx_.ndim - 2))
    return jnp.swapaxes(padded.reshape(B, chunks, positions, *a_BxTx_.shape[2:]), 0, 1)


def _unchunk(a_NxBxPx_, time: int):
    n, B, P = a_NxBxPx_.shape[:3]
    return jnp.swapaxes(a_NxBxPx_, 0, 1).reshape(B, n * P, *a_NxBxPx_.shape[3:])[:, :time]


def _logits_and_max(x_BxPxD, embedding_VxD, vocab_size: int):
    """Logits over the padded rows (padding masked to -inf), from a matmul in x's dtype (as PyTorch's autocast
    does), then fp32; and each position's largest."""
    logits_BxPxV = jnp.einsum("bpd,vd->bpv", x_BxPxD, embedding_VxD).astype(jnp.float32)
    if embedding_VxD.shape[0] > vocab_size:
        logits_BxPxV = jnp.where(jnp.arange(embedding_VxD.shape[0]) < vocab_size, logits_BxPxV, -jnp.inf)
    return logits_BxPxV, jnp.max(logits_BxPxV, axis=-1)


def _exps_and_losses(logits_BxPxV, max_BxP, labels_BxP):
    """exp(logits - max), their sums and the token losses: one pass over the logits."""
    exp_BxPxV = jnp.exp(logits_BxPxV - max_BxP[..., None])
    sum_BxP = jnp.sum(exp_BxPxV, axis=-1)
    label_logits_BxP = jnp.take_along_axis(logits_BxPxV, labels_BxP[..., None], axis=-1)[..., 0]
    return exp_BxPxV, sum_BxP, max_BxP + jnp.log(sum_BxP) - label_logits_BxP


def token_losses(x_BxTxD, embedding_VxD, labels_BxT, vocab_size: int, chunk_tokens: int | None = None):
    """Cross-entropy [B, T] (fp32) of `labels` under the logits x @ embedding^T (in x's dtype).

    For evaluation: differentiable, but its gradient would keep every chunk's logits.
    """
    if not chunk_tokens:
        on_cpu = jax.default_backend() == "cpu"
        chunk_tokens = max(1, CPU_EVAL_CHUNK_LOGITS // embedding_VxD.shape[0]) if on_cpu else CHUNK_TOKENS
    layout = chunk_layout(*labels_BxT.shape, chunk_tokens)
    embedding_VxD = embedding_VxD.astype(x_BxTxD.dtype)

    def chunk_losses(inputs):
        x_BxPxD, labels_BxP = inputs
        return _exps_and_losses(*_logits_and_max(x_BxPxD, embedding_VxD, vocab_size), labels_BxP)[2]

    losses = jax.lax.map(chunk_losses, (_chunks(x_BxTxD, *layout), _chunks(labels_BxT, *layout)))
    return _unchunk(losses, labels_BxT.shape[1])  # the padding's losses are cut off


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def mean_cross_entropy(x_BxTxD, embedding_VxD, labels_BxT, vocab_size: int, chunk_tokens: int = CHUNK_TOKENS):
    """Mean cross-entropy (fp32 scalar) of `labels` under the logits x @ embedding^T.

    Args:
      x_BxTxD: final hidden states (after ln_f), in the compute dtype.
      embedding_VxD: the tied embedding, padded rows included (V >= vocab_size), any float dtype.
      labels_BxT: int target ids < vocab_size.
    Its gradient (for x and the embedding) is computed in the forward pass, chunk by chunk.
    """
    return _loss_and_gradients(x_BxTxD, embedding_VxD, labels_BxT, vocab_size, chunk_tokens)[0]


def _loss_and_gradients(x_BxTxD, embedding_VxD, labels_BxT, vocab_size, chunk_tokens):
    B, T = labels_BxT.shape
    layout = chunk_layout(B, T, chunk_tokens)
    embedding = embedding_VxD.astype(x_BxTxD.dtype)
    scale = 1.0 / (B * T)

    def chunk(d_embedding_VxD, inputs):
        x_BxPxD, labels_BxP, real_BxP = inputs
        exp_BxPxV, sum_BxP, losses_BxP = _exps_and_losses(*_logits_and_max(x_BxPxD, embedding, vocab_size), labels_BxP)
        # d loss / d logits = (softmax - one_hot) x scale = exp x (scale / sum) - one_hot x scale. The matmuls take
        # the exps as that one pass wrote them (in [0, 1], the compute dtype) with scale / sum on their small
        # side, so the logits are read twice (max; exps and sums), not three times (max; sums; gradient). The
        # one-hot term is exact in fp32: the labels' embedding rows here, x added at the labels' rows below.
        exp_BxPxV, row_scale_BxPx1 = exp_BxPxV.astype(x_BxPxD.dtype), (scale / sum_BxP)[..., None]
        d_x_BxPxD = (jnp.einsum("bpv,vd->bpd", exp_BxPxV, embedding, preferred_element_type=jnp.float32) * row_scale_BxPx1
                     - scale * embedding[labels_BxP].astype(jnp.float32))
        scaled_x_BxPxD = (x_BxPxD * row_scale_BxPx1).astype(x_BxPxD.dtype)
        d_embedding_VxD += jnp.einsum("bpv,bpd->vd", exp_BxPxV, scaled_x_BxPxD, preferred_element_type=jnp.float32)
        return d_embedding_VxD, (jnp.where(real_BxP, losses_BxP, 0).sum(), d_x_BxPxD.astype(x_BxPxD.dtype))

    zeros = jnp.zeros(embedding.shape, jnp.float32)
    real_BxT = jnp.ones(labels_BxT.shape, bool)  # _chunks pads it with False: a last chunk's padding counts no loss
    d_embedding, (loss_sums, d_x) = jax.lax.scan(
        chunk, zeros, (_chunks(x_BxTxD, *layout), _chunks(labels_BxT, *layout), _chunks(real_BxT, *layout)))
    d_embedding = d_embedding.at[labels_BxT.reshape(-1)].add(-scale * x_BxTxD.reshape(B * T, -1).astype(jnp.float32))
    return loss_sums.sum() * scale, (_unchunk(d_x, T), d_embedding.astype(embedding_VxD.dtype))


def _backward(vocab_size, chunk_tokens, gradients, d_loss):
    d_x, d_embedding = gradients
    return (d_loss * d_x).astype(d_x.dtype), (d_loss * d_embedding).astype(d_embedding.dtype), None


mean_cross_entropy.defvjp(_loss_and_gradients, _backward)
