"""What a run reports: the peak FLOP/s that MFU divides by, found from jax's device_kind."""

import pytest

from gpt2_jax.metrics import peak_flops_of


@pytest.mark.parametrize("device_kind, peak", [
    ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12), ("NVIDIA H100 NVL", 835e12),
    ("NVIDIA H200", 989e12), ("NVIDIA GH200 480GB", 989e12), ("NVIDIA A100-SXM4-80GB", 312e12),
    ("NVIDIA L4", 121e12), ("NVIDIA L40S", 362e12), ("NVIDIA L40", 181e12),  # an L40S was an L4 ("L4" in it)
    ("TPU v4", 275e12), ("TPU v5 lite", 197e12), ("TPU v5", 459e12), ("TPU v6 lite", 918e12),
    ("NVIDIA GeForce RTX 4090", None), ("cpu", None),
])
def test_the_peak_is_found_by_whole_names(device_kind, peak):
    assert peak_flops_of(device_kind) == peak
