"""What runs fastest on each platform: XLA flags set before JAX starts, and the model's kernels.

Measured on one H200 (docs/benchmarks.md): cuDNN's flash attention is 1.75x XLA's unfused
attention in the GPT-2 124M train step, and cuBLAS GEMMs (Triton's GEMM emitter off) another
1.19x; then queries, keys and values as three matmuls and the fused add + LayerNorm kernel
1.05x more. A flag the user already put in XLA_FLAGS is left as they set it.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp

from gpt2_jax.attention import KERNELS
from gpt2_jax.config import ConfigError

# XLA flags by platform-independent name: XLA parses every backend's flags on every backend.
XLA_FLAGS = (
    "--xla_gpu_enable_triton_gemm=false",  # cuBLAS beats Triton's GEMMs for GPT-2's shapes (+19% on an H200)
)
ATTENTION_IMPLS = ("", *KERNELS)  # "": the fastest exact kernel for the platform


def set_xla_flags() -> None:
    """Add XLA_FLAGS's defaults to the environment; call before JAX's first computation."""
    flags = os.environ.get("XLA_FLAGS", "")
    for flag in XLA_FLAGS:
        if flag.split("=")[0] not in flags:
            flags += " " + flag
    os.environ["XLA_FLAGS"] = flags.strip()


def attention_impl(requested: str, dtype, device=None) -> str:
    """The attention kernel to use: `requested`, or for "" the fastest exact one on `device`.

    cuDNN flash attention on NVIDIA GPUs in bf16/fp16 (it takes no fp32), the Pallas splash-attention
    kernel on TPUs, and elsewhere XLA's ops a chunk of queries at a time (attention.chunked_attention:
    2.2-2.4x XLA's whole square at T=1,024 on a CPU; on GPUs in fp32 and AMD GPUs, not measured).
    """
    if requested:
        return requested
    device = device or jax.devices()[0]
    if device.platform == "gpu" and "nvidia" in device.device_kind.lower():
        return "cudnn" if jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16) else "chunked"
    return "pallas" if device.platform == "tpu" else "chunked"


def model_kernels(attention: str, split_qkv: bool | None, fused_norm: bool | None, dtype, device=None) -> dict:
    """GPT2's kernel arguments (attention_impl, split_qkv, fused_norm): each as requested, or for "" / None
    the fastest exact choice on `device`.

    NVIDIA GPUs in bf16/fp16: cuDNN's flash attention; queries, keys and values as three matmuls (cuDNN
    takes each dense, so one matmul's output was copied apart: 1.018x with the kernel); each residual add and
    the LayerNorm after it as one Pallas kernel (1.028x; on the device, 2.5e-7 from XLA's ops in fp32). Elsewhere XLA's
    ops (Pallas splash attention on TPUs): the other two were measured faster on an H200 only.
    """
    attention = attention_impl(attention, dtype, device)
    return {"attention_impl": attention,
            "split_qkv": attention == "cudnn" if split_qkv is None else split_qkv,
            "fused_norm": attention_impl("", dtype, device) == "cudnn" if fused_norm is None else fused_norm}


def memory_bytes(device=None) -> int | None:
    """What one device can hold: a CPU host's physical memory, an accelerator's allocator limit (None if
    its allocator does not say)."""
    device = device or jax.devices()[0]
    if device.platform == "cpu":
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return (device.memory_stats() or {}).get("bytes_limit")


def split_cpu(devices: int) -> None:
    """Make a CPU host `devices` devices (experimental: train_config.py's cpu_devices says why); 0: leave it one."""
    if devices:
        try:
            jax.config.update("jax_num_cpu_devices", devices)
        except RuntimeError:
            raise ConfigError("cpu_devices must be set before JAX computes anything in this process") from None
