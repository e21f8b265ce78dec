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
    assert accelerator.attention_impl("", jnp.float32, h100) == "xla"  # cuDNN flash attention has no fp32
    assert accelerator.attention_impl("", jnp.bfloat16, device("gpu", "AMD Instinct MI300X")) == "xla"
    assert accelerator.attention_impl("", jnp.bfloat16, device("tpu", "TPU v5 lite")) == "pallas"
    assert accelerator.attention_impl("", jnp.float32, device("cpu", "cpu")) == "xla"
    assert accelerator.attention_impl("xla", jnp.bfloat16, h100) == "xla"  # an explicit choice wins


def test_xla_flags_are_added_once_and_never_override_the_users(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_gpu_enable_triton_gemm=true --other=1")
    accelerator.set_xla_flags()
    accelerator.set_xla_flags()
    import os

    assert os.environ["XLA_FLAGS"] == "--xla_gpu_enable_triton_gemm=true --other=1"
    monkeypatch.delenv("XLA_FLAGS")
    accelerator.set_xla_flags()
    assert os.environ["XLA_FLAGS"] == " ".join(accelerator.XLA_FLAGS)
