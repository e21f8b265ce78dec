"""What XLA plans for the GPT-2 124M train step on one H100 or H200, compiled here without a GPU.

Needs JAX's CUDA plugin (`pip install "jax[cuda12]==$(python -c 'import jax; print(jax.__version__)')"`),
not a GPU: the step is compiled for the card described in scripts/gpu_targets/ (XLA's deviceless
compilation) with the flags the train CLI sets, and its optimized program is read back. Prints the
memory XLA plans, the kernels by kind with the bytes they move (hlo_traffic.py: an estimate, not a
measurement), and the groups of XLA's own fusions that move the most, with bytes / bandwidth as a
floor on their time. Those fusions are memory-bound, so fewer bytes is what makes them faster; the
matmuls and attention are bound by arithmetic, and only a GPU run times anything.

    python scripts/gpu_plan.py                        # B=64, bf16, cuDNN attention, on an H200
    python scripts/gpu_plan.py --gpu h100 --fused-norm off --save-hlo /tmp/step.hlo   # XLA's LayerNorms
    XLA_FLAGS=--xla_gpu_experimental_all_fusions_with_triton=true python scripts/gpu_plan.py
"""

import argparse
import collections
import functools
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import hlo_traffic  # noqa: E402  (beside this script)
import model_variants  # noqa: E402

from gpt2_jax import accelerator  # noqa: E402
from gpt2_jax.cli import HelpFormatter  # noqa: E402
from gpt2_jax.cli_main import exit_on_user_error  # noqa: E402
from gpt2_jax.errors import UserError  # noqa: E402

TARGETS = ROOT / "scripts" / "gpu_targets"


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--gpu", default="h200", choices=sorted(p.stem for p in TARGETS.glob("*.txtpb")),
                        help="the card to compile for (scripts/gpu_targets/)")
    parser.add_argument("--batch-size", type=int, default=64, help="windows of 1,024 tokens per step")
    model_variants.add_flags(parser)
    parser.add_argument("--top", type=int, default=15, help="fusion groups to list")
    parser.add_argument("--save-hlo", metavar="PATH", help="also write the optimized HLO text here")
    args = parser.parse_args()
    model_variants.check_flags(parser, args)
    if args.batch_size < 1:
        parser.error(f"--batch-size {args.batch_size} must be at least 1")
    if args.save_hlo and not Path(args.save_hlo).resolve().parent.is_dir():
        parser.error(f"--save-hlo {args.save_hlo}: no folder {Path(args.save_hlo).resolve().parent}")
    return args


def compile_only_device(gpu: str):
    """One `gpu` (scripts/gpu_targets/) to compile for, whether or not this machine has one."""
    from jax.experimental import topologies

    os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")  # no driver to check here
    try:
        return topologies.get_topology_desc(platform="cuda", topology="1x1x1",
                                            target_config=(TARGETS / f"{gpu}.txtpb").read_text()).devices[0]
    except Exception as error:  # no plugin, or one that cannot compile without a device
        raise UserError(f"cannot compile for a CUDA GPU here ({str(error).splitlines()[0]}); "
                        "install JAX's CUDA plugin: pip install 'jax[cuda12]' at this jax's version") from None


def compile_step(args):
    """The compiled train step (bench_train.py's, GPT-2 124M at T=1024 in bf16) for one `args.gpu`, and GPT2's
    kernel options (the train CLI's on that card but those the flags set)."""
    import jax
    import jax.numpy as jnp

    from gpt2_jax import GPT2, GPT2Config, sharding, step
    from gpt2_jax.optim import make_optimizer
    from gpt2_jax.train_config import default_config

    device = compile_only_device(args.gpu)
    config = default_config()
    config.warmup_steps, config.max_steps = 10, 1000
    options = model_variants.model_options(args, jnp.bfloat16, "cudnn", device)  # it says 'gpu', 'NVIDIA H200'
    gpt2 = GPT2(GPT2Config(), dtype=jnp.bfloat16, vocab_pad_multiple=64, **options)
    optimizer, mesh = make_optimizer(config), sharding.make_mesh(1, [device])
    state = jax.eval_shape(functools.partial(step.init_train_state, gpt2, optimizer), jax.random.key(0))
    state = sharding.with_shardings(state, sharding.tree_shardings(mesh, state))
    windows = jax.ShapeDtypeStruct((1, args.batch_size, 1025), jnp.int32,
                                   sharding=sharding.batch_sharding(mesh, leading_dims=1))
    return jax.jit(functools.partial(step.train_step, gpt2, optimizer), donate_argnums=0).lower(
        state, windows).compile(), options


def group(op_name: str) -> str:
    """`jit(train_step)/while/body/closed_call/transpose(jvp(GPT2.hidden))/GPT2._forward/h_3/ln_2/add_any`
    -> `backward h_N/ln_2/add_any`; the loss's (loss.py, outside GPT2) -> `loss reduce_max`."""
    if "GPT2._forward/" in op_name:
        direction = "backward " if "transpose(" in op_name else ""
        return direction + re.sub(r"h_\d+", "h_N", op_name.split("GPT2._forward/")[-1])
    return ("loss " if "jvp()" in op_name else "") + op_name.split("closed_call/")[-1]


@exit_on_user_error
def main():
    args = parse_args()
    bandwidth = float(re.search(r"memory_bandwidth: (\d+)", (TARGETS / f"{args.gpu}.txtpb").read_text()).group(1))
    accelerator.set_xla_flags()
    compiled, options = compile_step(args)
    text = compiled.as_text()
    if args.save_hlo:
        Path(args.save_hlo).write_text(text)
    memory = compiled.memory_analysis()
    tiles = f" tiles {','.join(map(str, args.fused_norm_tiles))}" if args.fused_norm_tiles else ""
    print(f"# {args.gpu}, B={args.batch_size}, {model_variants.describe(options)}{tiles}, "
          f"gelu {'autodiff' if args.autodiff_gelu else 'gelu.py'}, XLA_FLAGS={os.environ['XLA_FLAGS']}")
    print(f"memory: arguments {memory.argument_size_in_bytes / 2**30:.1f} GiB, "
          f"temporaries {memory.temp_size_in_bytes / 2**30:.1f} GiB")
    kernels = hlo_traffic.kernels(text)
    totals = collections.defaultdict(lambda: [0, 0])
    for kernel in kernels:
        totals[hlo_traffic.category(kernel)][0] += kernel.bytes
        totals[hlo_traffic.category(kernel)][1] += kernel.launches
    print("\n| kind | launches | GB moved | GB / bandwidth (ms) |\n| --- | ---: | ---: | ---: |")
    for kind, (moved, launches) in sorted(totals.items()):
        print(f"| {kind} | {launches} | {moved / 1e9:.1f} | {moved / bandwidth * 1e3:.1f} |")
    groups = collections.defaultdict(lambda: [0, 0])
    for kernel in kernels:
        if hlo_traffic.category(kernel) == "fusion":
            groups[group(kernel.op_name)][0] += kernel.bytes
            groups[group(kernel.op_name)][1] += kernel.launches
    print(f"\nXLA's fusions, the {args.top} groups that move the most:\n"
          "| operation | launches | GB moved | ms at bandwidth |\n| --- | ---: | ---: | ---: |")
    for name, (moved, launches) in sorted(groups.items(), key=lambda item: -item[1][0])[:args.top]:
        print(f"| {name} | {launches} | {moved / 1e9:.2f} | {moved / bandwidth * 1e3:.2f} |")


if __name__ == "__main__":
    main()
