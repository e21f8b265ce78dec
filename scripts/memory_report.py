"""Device memory of a config's train step, from XLA's plan of the compiled step (nothing is run).

For each config file: the step that `python -m gpt2_jax.train` compiles (its model, dtype, remat,
batch_size, one micro-batch per scan iteration), lowered for one device and compiled; prints the
bytes XLA plans for its arguments (params, optimizer state, windows), outputs not aliased to
them, and temporaries (activations kept for the backward pass, gradients, workspace).

    python scripts/memory_report.py configs/gpt2_124m.py configs/gpt2_350m.py [--batch-size N] [--remat]
    python scripts/memory_report.py configs/gpt2_*.py --gpu h100   # for an H100, on any machine (gpu_plan.py)
"""

import argparse
import functools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from gpt2_jax import accelerator  # noqa: E402

accelerator.set_xla_flags()
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from gpt2_jax import sharding, train_config  # noqa: E402
from gpt2_jax.cli import HelpFormatter  # noqa: E402
from gpt2_jax.cli_main import exit_on_user_error  # noqa: E402
from gpt2_jax.optim import make_optimizer  # noqa: E402
from gpt2_jax.step import init_train_state, train_step  # noqa: E402
from gpt2_jax.train_flags import parse_flags  # noqa: E402


def planned_bytes(config, device) -> dict:
    model_config = train_config.model_config(config, 50257, 50256)
    model, _ = train_config.make_model(config, model_config, device)
    optimizer = make_optimizer(config)
    mesh = sharding.make_mesh(1, [device])
    state = jax.eval_shape(functools.partial(init_train_state, model, optimizer), jax.random.key(0))
    state_sharding = sharding.tree_shardings(mesh, state)
    windows = jax.ShapeDtypeStruct((train_config.accumulation_steps(config), config.batch_size, config.block_size + 1),
                                   jnp.int32, sharding=sharding.batch_sharding(mesh, leading_dims=1))
    state = sharding.with_shardings(state, state_sharding)
    compiled = jax.jit(functools.partial(train_step, model, optimizer), donate_argnums=0).lower(state, windows).compile()
    m = compiled.memory_analysis()
    total = m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes
    return {"arguments": m.argument_size_in_bytes, "temporaries": m.temp_size_in_bytes, "total": total}


@exit_on_user_error
def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("configs", nargs="+", help="configs/*.py files")
    parser.add_argument("--batch-size", type=int, help="override the config's micro-batch")
    parser.add_argument("--remat", action="store_true", help="force remat on")
    parser.add_argument("--gpu", choices=("h100", "h200"),
                        help="plan for this GPU without one (needs JAX's CUDA plugin: scripts/gpu_plan.py)")
    args = parser.parse_args()
    if args.batch_size is not None and args.batch_size < 1:
        parser.error(f"--batch-size {args.batch_size} must be at least 1")
    if args.gpu:
        import gpu_plan  # beside this script

        device = gpu_plan.compile_only_device(args.gpu)
    else:
        device = jax.devices()[0]
    print(f"# {device.device_kind}{' (compiled for, not run on)' if args.gpu else ''}, jax {jax.__version__}")
    print("| config | batch | remat | arguments GiB | temporaries GiB | total GiB |")
    print("| --- | ---: | --- | ---: | ---: | ---: |")
    for path in args.configs:
        config, _ = parse_flags(["memory", f"--config={path}", "--workdir=unused"])
        with config.unlocked():
            config.batch_size = args.batch_size or config.batch_size
            config.tokens_per_step = max(config.tokens_per_step, config.batch_size * config.block_size)
            config.remat = config.remat or args.remat
        planned = planned_bytes(config, device)
        print(f"| {Path(path).name} | {config.batch_size} | {config.remat} | {planned['arguments'] / 2**30:.1f} | "
              f"{planned['temporaries'] / 2**30:.1f} | {planned['total'] / 2**30:.1f} |", flush=True)


if __name__ == "__main__":
    main()
