"""The model variants that bench_train.py and gpu_plan.py take as flags (docs/benchmarks.md's ablations).

Argparse only at import: bench_train.py reads its flags before JAX starts.
"""


def add_flags(parser) -> None:
    parser.add_argument("--residual-dtype", choices=("float32", "bfloat16"), default="float32",
                        help="ours with the residual stream in this dtype (model.py)")
    parser.add_argument("--split-qkv", action="store_true", help="ours with queries, keys, values as three matmuls")
    parser.add_argument("--fused-norm", action="store_true",
                        help="ours with each residual add and LayerNorm as one Pallas kernel (layer_norm_kernel.py)")
    parser.add_argument("--autodiff-gelu", action="store_true",
                        help="ours with the GELU's gradient by autodiff of jax.nn.gelu, as before gelu.py")


def model_options(args) -> dict:
    """GPT2's keyword arguments for the variant; with --autodiff-gelu, also puts back the GELU before gelu.py
    (for this process: a measurement of what gelu.py gave, not a way to train)."""
    import functools

    import jax
    import jax.numpy as jnp

    from gpt2_jax import model

    if args.autodiff_gelu:
        model.gelu_tanh = functools.partial(jax.nn.gelu, approximate=True)
    return {"residual_dtype": jnp.dtype(args.residual_dtype), "split_qkv": args.split_qkv,
            "fused_norm": args.fused_norm}
