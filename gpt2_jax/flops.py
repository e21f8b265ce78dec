"""FLOPs: what a GPT-2 step computes per token, and the peak a device could do (MFU is their ratio)."""

from __future__ import annotations

import re

import jax

from gpt2_jax.config import GPT2Config

# Dense bf16 peak FLOP/s per device (datasheets), by the first pattern found in jax's device_kind
# ("NVIDIA H100 80GB HBM3", "NVIDIA L40S", "TPU v5 lite"): whole names, so an L40S is not an L4.
# Override with --config.peak_flops for anything else.
PEAK_FLOPS = [
    (r"\bH100 PCIe\b", 756e12), (r"\bH100 NVL\b", 835e12), (r"\bG?H(100|200)\b", 989e12), (r"\bB200\b", 2250e12),
    (r"\bA100\b", 312e12), (r"\bL40S\b", 362e12), (r"\bL40\b", 181e12), (r"\bL4\b", 121e12),
    (r"\bTPU v4\b", 275e12), (r"\bTPU v5 lite\b", 197e12), (r"\bTPU v5p?\b", 459e12), (r"\bTPU v6", 918e12),
]


def train_flops_per_token(config: GPT2Config) -> float:
    """Forward + backward FLOPs per token: 6 per weight plus attention (PaLM's appendix B).

    The weights exclude wpe (a lookup, no matmul) but include wte, which is also the head.
    """
    weights = (
        config.vocab_size * config.n_embd
        + config.n_layer * (4 * config.n_embd * config.n_embd + 2 * config.n_embd * config.mlp_width)
    )
    return 6 * weights + 12 * config.n_layer * config.n_embd * config.n_positions


def peak_flops_per_device(override: float = 0.0) -> float | None:
    """`override` if set, else the datasheet peak of this host's devices (peak_flops_of), or None if not known."""
    if override:
        return override
    return peak_flops_of(jax.devices()[0].device_kind)


def peak_flops_of(device_kind: str) -> float | None:
    """The peak FLOP/s of the first PEAK_FLOPS pattern found in `device_kind`, or None."""
    return next((flops for pattern, flops in PEAK_FLOPS if re.search(pattern, device_kind)), None)
