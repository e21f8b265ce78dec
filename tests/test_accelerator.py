"""Per-platform choices: the attention kernel, and XLA flags that respect the user's own."""

import types

import jax.numpy as jnp

from gpt2_jax import accelerator


def device(platform, kind):
    return types.SimpleNamespace(platform=platform, device_kind=kind)


def test_the_attention_kernel_follows_the_platform_and_dtype():
    h100 = device("gpu", "NVIDIA H100 80GB HBM3")
    assert accelerator.attention_impl("", jnp.bfloat16, h100) == "cudnn"
    assert accelerator.attention_impl("", "bfloat16", h100) == "cudnn"
    assert accelerator.attention_impl("", jnp.float32, h100) == "chunked"  # cuDNN flash attention has no fp32
    assert accelerator.attention_impl("", jnp.bfloat16, device("gpu", "AMD Instinct MI300X")) == "chunked"
    assert accelerator.attention_impl("", jnp.bfloat16, device("tpu", "TPU v5 lite")) == "pallas"
    assert accelerator.attention_impl("", jnp.float32, device("cpu", "cpu")) == "chunked"
    assert accelerator.attention_impl("xla", jnp.bfloat16, h100) == "xla"  # an explicit choice wins


def test_the_model_kernels_left_to_the_platform_are_those_measured_faster_there():
    """None / "": cuDNN, three qkv matmuls and the fused add + LayerNorm on NVIDIA GPUs in half precision (what an
    H200 measured faster), XLA's ops (attention by chunks) elsewhere; a setting given is kept, and three matmuls
    follow cuDNN."""
    h100, cpu, tpu = device("gpu", "NVIDIA H100 80GB HBM3"), device("cpu", "cpu"), device("tpu", "TPU v5 lite")
    kernels = lambda *args: tuple(accelerator.model_kernels(*args).values())
    assert kernels("", None, None, "bfloat16", h100) == ("cudnn", True, True)
    assert kernels("", None, None, jnp.float16, h100) == ("cudnn", True, True)
    assert kernels("", None, None, "float32", h100) == ("chunked", False, False)
    assert kernels("xla", None, None, "bfloat16", h100) == ("xla", False, True)  # the fused norm is not cuDNN's
    assert kernels("", False, False, "bfloat16", h100) == ("cudnn", False, False)
    assert kernels("", None, None, "bfloat16", device("gpu", "AMD Instinct MI300X")) == ("chunked", False, False)
    assert kernels("", None, None, "bfloat16", tpu) == ("pallas", False, False)
    assert kernels("", None, None, "float32", cpu) == ("chunked", False, False)
    assert kernels("", True, True, "float32", cpu) == ("chunked", True, True)  # validate refuses fused_norm on a CPU
    assert list(accelerator.model_kernels("", None, None, "float32", cpu)) == ["attention_impl", "split_qkv",
                                                                              "fused_norm"]


def test_xla_flags_are_added_once_and_never_override_the_users(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_gpu_enable_triton_gemm=true --other=1")
    accelerator.set_xla_flags()
    accelerator.set_xla_flags()
    import os

    assert os.environ["XLA_FLAGS"] == "--xla_gpu_enable_triton_gemm=true --other=1"
    monkeypatch.delenv("XLA_FLAGS")
    accelerator.set_xla_flags()
    assert os.environ["XLA_FLAGS"] == " ".join(accelerator.XLA_FLAGS)
