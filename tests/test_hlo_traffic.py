"""scripts/hlo_traffic.py (the bytes each kernel of an optimized HLO program moves) and scripts/gpu_plan.py."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
from conftest import assert_one_line_error

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
sys.path.insert(0, str(SCRIPTS))
import hlo_traffic  # noqa: E402

# What XLA:GPU makes of the loss (loss.py): a GEMM writing the logits, a fusion reading one logit per row
# through convert + gather, one writing a value per row into them in place, one reading them all.
LOSS_LIKE = """HloModule jit_loss, is_scheduled=true

%fused_gather (param_0.1: bf16[64,1000], param_1.1: s32[64,1]) -> f32[64] {
  %param_0.1 = bf16[64,1000]{1,0} parameter(0)
  %convert.1 = f32[64,1000]{1,0} convert(%param_0.1)
  %param_1.1 = s32[64,1]{1,0} parameter(1)
  %gather.1 = f32[64,1]{1,0} gather(%convert.1, %param_1.1), offset_dims={}, collapsed_slice_dims={0,1}
  ROOT %bitcast.1 = f32[64]{0} bitcast(%gather.1)
}

%fused_scatter (param_0.2: bf16[64,1000], param_1.2: s32[64,2], param_2.2: bf16[64]) -> bf16[64,1000] {
  %param_0.2 = bf16[64,1000]{1,0} parameter(0)
  %param_1.2 = s32[64,2]{1,0} parameter(1)
  %param_2.2 = bf16[64]{0} parameter(2)
  ROOT %scatter.1 = bf16[64,1000]{1,0} scatter(%param_0.2, %param_1.2, %param_2.2), update_window_dims={}
}

%fused_exp (param_0.3: bf16[64,1000]) -> bf16[64,1000] {
  %param_0.3 = bf16[64,1000]{1,0} parameter(0)
  %convert.3 = f32[64,1000]{1,0} convert(%param_0.3)
  %exp.3 = f32[64,1000]{1,0} exponential(%convert.3)
  ROOT %convert.4 = bf16[64,1000]{1,0} convert(%exp.3)
}

%body (arg.1: (s32[], bf16[64,1000])) -> (s32[], bf16[64,1000]) {
  %arg.1 = (s32[], bf16[64,1000]{1,0}) parameter(0)
  %i.1 = s32[] get-tuple-element(%arg.1), index=0
  %x.1 = bf16[64,1000]{1,0} get-tuple-element(%arg.1), index=1
  %exp_fusion = bf16[64,1000]{1,0} fusion(%x.1), kind=kLoop, calls=%fused_exp, metadata={op_name="jit(loss)/while/body/exp"}
  ROOT %tuple.1 = (s32[], bf16[64,1000]{1,0}) tuple(%i.1, %exp_fusion)
}

%condition (arg.2: (s32[], bf16[64,1000])) -> pred[] {
  %arg.2 = (s32[], bf16[64,1000]{1,0}) parameter(0)
  ROOT %constant.2 = pred[] constant(true)
}

ENTRY %main (x: bf16[64,32], e: bf16[32,1000], labels: s32[64,1], indices: s32[64,2], values: bf16[64]) -> f32[64] {
  %x = bf16[64,32]{1,0} parameter(0)
  %e = bf16[32,1000]{1,0} parameter(1)
  %labels = s32[64,1]{1,0} parameter(2)
  %indices = s32[64,2]{1,0} parameter(3)
  %values = bf16[64]{0} parameter(4)
  %gemm = (bf16[64,1000]{1,0}, s8[4194304]{0}) custom-call(%x, %e), custom_call_target="__cublas$lt$matmul", metadata={op_name="jit(loss)/dot_general"}
  %logits = bf16[64,1000]{1,0} get-tuple-element(%gemm), index=0
  %picked = f32[64]{0} fusion(%logits, %labels), kind=kLoop, calls=%fused_gather, metadata={op_name="jit(loss)/take_along_axis"}
  %updated = bf16[64,1000]{1,0} fusion(%logits, %indices, %values), kind=kInput, calls=%fused_scatter, metadata={op_name="jit(loss)/scatter"}
  %zero = s32[] constant(0)
  %init = (s32[], bf16[64,1000]{1,0}) tuple(%zero, %updated)
  %loop = (s32[], bf16[64,1000]{1,0}) while(%init), condition=%condition, body=%body, backend_config={"known_trip_count":{"n":"5"}}
  ROOT %result = f32[64]{0} copy(%picked)
}
"""


def test_each_kernel_counts_what_it_reads_and_writes():
    kernels = {k.name: k for k in hlo_traffic.kernels(LOSS_LIKE)}
    assert set(kernels) == {"gemm", "picked", "updated", "exp_fusion", "result"}
    # The GEMM: both operands and its result, not cuBLAS's workspace.
    assert kernels["gemm"].bytes == 64 * 32 * 2 + 32 * 1000 * 2 + 64 * 1000 * 2
    # A gather through a convert reads one bf16 logit per row, not the row.
    assert kernels["picked"].bytes == 64 * 2 + 64 * 4 + 64 * 4
    # A scatter into the logits in place moves its indices and updates, and reads and writes the entries
    # it updates (a scatter-add reads them back), not the rest of the buffer.
    assert kernels["updated"].bytes == 64 * 2 * 4 + 64 * 2 + 2 * 64 * 2
    # A loop's body counts once per known trip; an elementwise kernel reads and writes everything.
    assert kernels["exp_fusion"].launches == 5 and kernels["exp_fusion"].bytes == 5 * 2 * 64 * 1000 * 2
    assert [hlo_traffic.category(kernels[n]) for n in ("gemm", "picked")] == ["matmul", "fusion"]
    assert kernels["picked"].op_name == "jit(loss)/take_along_axis"


def test_a_pallas_kernel_is_its_own_kind():
    """What a pallas_call becomes on a GPU (layer_norm_kernel.py's, as gpu_plan.py compiles it)."""
    hlo = """HloModule jit_norm, is_scheduled=true

ENTRY %main (x: f32[128,768], scale: f32[768]) -> f32[128,768] {
  %x = f32[128,768]{1,0} parameter(0)
  %scale = f32[768]{0} parameter(1)
  ROOT %pallas_call.1 = f32[128,768]{1,0} custom-call(%x, %scale), custom_call_target="__gpu$xla.gpu.triton", metadata={op_name="jit(norm)/pallas_call"}
}
"""
    (kernel,) = hlo_traffic.kernels(hlo)
    assert hlo_traffic.category(kernel) == "pallas" and kernel.bytes == 2 * 128 * 768 * 4 + 768 * 4


def test_what_reads_a_whole_buffer_counts_it_whole():
    # The buffer a scatter updates, reached through a convert: not in place, so read and written whole;
    # a gather that takes more than its operand holds counts the operand once; of a conditional's
    # branches, the one that moves the most.
    text = LOSS_LIKE.replace("ROOT %scatter.1 = bf16[64,1000]{1,0} scatter(%param_0.2,",
                             "%c.2 = bf16[64,1000]{1,0} convert(%param_0.2)\n  ROOT %scatter.1 = bf16[64,1000]{1,0} scatter(%c.2,")
    kernels = {k.name: k for k in hlo_traffic.kernels(text)}
    assert kernels["updated"].bytes == 64 * 1000 * 2 + 64 * 2 * 4 + 64 * 2 + 64 * 1000 * 2
    wide = LOSS_LIKE.replace("%gather.1 = f32[64,1]{1,0} gather(", "%gather.1 = f32[64,5000]{1,0} gather(")
    assert {k.name: k for k in hlo_traffic.kernels(wide)}["picked"].bytes == 64 * 1000 * 2 + 64 * 4 + 64 * 4
    branches = LOSS_LIKE.replace(
        "%loop = (s32[], bf16[64,1000]{1,0}) while(%init), condition=%condition, body=%body, "
        'backend_config={"known_trip_count":{"n":"5"}}',
        "%loop = (s32[], bf16[64,1000]{1,0}) conditional(%zero, %init, %init), "
        "branch_computations={%condition, %body}")
    launched = [k.name for k in hlo_traffic.kernels(branches)]
    assert launched.count("exp_fusion") == 1 and "constant.2" not in launched


def test_a_program_compiled_here_reads_back():
    def f(x):
        return jax.lax.fori_loop(0, 7, lambda i, x: jnp.tanh(x) * 2.0, x).sum()

    kernels = hlo_traffic.kernels(jax.jit(f).lower(jnp.ones((256, 256))).compile().as_text())
    assert kernels and max(k.launches for k in kernels) == 7  # the loop's body, once per trip
    assert sum(k.bytes for k in kernels) >= 7 * 2 * 256 * 256 * 4  # each trip reads and writes x


def test_hlo_without_an_entry_is_refused():
    with pytest.raises(ValueError, match="no ENTRY"):
        hlo_traffic.kernels("HloModule empty\n")


def cuda_plugin_installed():
    try:
        return any(importlib.util.find_spec(f"jax_plugins.xla_cuda{version}") for version in (12, 13))
    except ModuleNotFoundError:  # no jax_plugins package at all
        return False


def test_gpu_plan_names_its_groups_and_says_in_one_line_what_it_needs():
    import gpu_plan

    forward = "jit(train_step)/while/body/closed_call/jvp(GPT2.hidden)/GPT2._forward/h_3/ln_2/reduce_sum"
    backward = "jit(train_step)/while/body/closed_call/transpose(jvp(GPT2.hidden))/GPT2._forward/h_11/mlp/mul"
    loss = "jit(train_step)/while/body/closed_call/jvp()/while/body/closed_call/reduce_max"
    assert [gpu_plan.group(n) for n in (forward, backward, loss)] == [
        "h_N/ln_2/reduce_sum", "backward h_N/mlp/mul", "loss reduce_max"]
    if cuda_plugin_installed():
        pytest.skip("JAX's CUDA plugin is installed: the plan would compile")
    result = subprocess.run([sys.executable, str(SCRIPTS / "gpu_plan.py"), "--batch-size", "2"],
                            capture_output=True, text=True, timeout=300)
    assert_one_line_error(result, "cannot compile for a CUDA GPU here")
