"""The model variants that bench_train.py and gpu_plan.py take as flags (docs/benchmarks.md's ablations).

Argparse only at import: bench_train.py reads its flags before JAX starts.
"""

import argparse


def add_flags(parser) -> None:
    parser.add_argument("--residual-dtype", choices=("float32", "bfloat16"), default="float32",
                        help="ours with the residual stream in this dtype (model.py)")
    parser.add_argument("--split-qkv", choices=("on", "off"),
                        help="ours with queries, keys, values as three matmuls, or as one split by copying "
                             "(default: the train CLI's choice here, on with cuDNN attention)")
    parser.add_argument("--fused-norm", choices=("on", "off"),
                        help="ours with each residual add and LayerNorm as one Pallas kernel (layer_norm_kernel.py), "
                             "or as XLA's ops (default: the train CLI's choice here, on for NVIDIA GPUs in bf16)")
    parser.add_argument("--fused-norm-tiles", type=_tiles, metavar="ROWS,CHUNK,WARPS",
                        help="with --fused-norm on: the kernel's rows per program, rows per tile and warps per "
                             "program, in place of layer_norm_kernel.py's (64,2,4); not for --cli-steps' run")
    parser.add_argument("--autodiff-gelu", action="store_true",
                        help="ours with the GELU's gradient by autodiff of jax.nn.gelu, as before gelu.py")


def check_flags(parser, args) -> None:
    """One-line usage errors (exit 2) for combinations that argparse's types cannot see."""
    if args.fused_norm_tiles and args.fused_norm != "on":
        parser.error("--fused-norm-tiles retiles the fused kernel: it needs --fused-norm on")


def _tiles(text: str) -> tuple[int, int, int]:
    """ROWS,CHUNK,WARPS: powers of two, CHUNK <= ROWS (the kernel's loop), CHUNK <= 16 (Triton's 2^20 elements
    a tile at D <= 65,536), WARPS <= 32 (1,024 threads a program)."""
    try:
        rows, chunk, warps = (int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected ROWS,CHUNK,WARPS (three integers), got {text!r}") from None
    if not all(n > 0 and n & (n - 1) == 0 for n in (rows, chunk, warps)) or chunk > min(rows, 16) or warps > 32:
        raise argparse.ArgumentTypeError(f"expected powers of two with CHUNK <= ROWS, CHUNK <= 16 and WARPS <= 32, "
                                         f"got {text!r}")
    return rows, chunk, warps


def model_options(args, dtype, attention: str = "", device=None) -> dict:
    """GPT2's keyword arguments for the variant in `dtype` on `device` (the kernels the train CLI would pick
    but those the flags set; `attention` as its attention_impl). For this process only (measurements, not ways
    to train): --autodiff-gelu puts back the GELU before gelu.py, --fused-norm-tiles retiles the fused kernel."""
    import functools

    import jax
    import jax.numpy as jnp

    from gpt2_jax import accelerator, layer_norm_kernel, model

    if args.autodiff_gelu:
        model.gelu_tanh = functools.partial(jax.nn.gelu, approximate=True)
    if args.fused_norm_tiles:  # read by the kernels when they are traced, so before any step is compiled
        layer_norm_kernel.ROWS, layer_norm_kernel.CHUNK, layer_norm_kernel.WARPS = args.fused_norm_tiles
    return {"residual_dtype": jnp.dtype(args.residual_dtype),
            **accelerator.model_kernels(attention, **_kernel_settings(args), dtype=dtype, device=device)}


def _kernel_settings(args) -> dict:
    """The train CLI's split_qkv and fused_norm for --split-qkv/--fused-norm: True, False, None (its choice)."""
    return {key: {"on": True, "off": False, None: None}[getattr(args, key)] for key in ("split_qkv", "fused_norm")}


def config_overrides(args) -> list[str]:
    """The train CLI's --config.KEY=VALUE flags for the variant's settings that it has (not the tiles or GELU)."""
    return [f"--config.{key}={value}" for key, value in _kernel_settings(args).items() if value is not None] + (
        [f"--config.residual_dtype={args.residual_dtype}"] if args.residual_dtype != "float32" else [])


def describe(options: dict) -> str:
    """`cudnn attention, split qkv, fused norm` for a table's row (model_options's result)."""
    return ", ".join([f"{options['attention_impl']} attention"] + ["split qkv"] * options["split_qkv"] +
                     ["fused norm"] * options["fused_norm"] + [f"{options['residual_dtype'].name} residual"] *
                     (options["residual_dtype"].name != "float32"))
