"""Hugging Face PyTorch GPT-2 checkpoints <-> Flax params. Knows the key map, nothing of training.

The map is a rename: strip `transformer.`, `h.{i}` -> `h_{i}`, and `weight` ->
`kernel` (Conv1D, already [in, out] like a Dense kernel), `scale` (LayerNorm) or
`embedding` (wte, wpe). HF's own *Flax* checkpoints store kernels transposed: we read
PyTorch weights only.

    python -m gpt2_jax.convert --from-hf gpt2 --out gpt2_flax      # HF -> config.json + params/
    python -m gpt2_jax.convert --to-hf runs/shakespeare --out hf_out  # ours -> HF directory
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from tqdm import tqdm

from gpt2_jax import checkpoint, hf_files, outdir
from gpt2_jax.cli import argument_parser
from gpt2_jax.config import GPT2Config
from gpt2_jax.errors import UserError, exit_on_user_error
from gpt2_jax.model import GPT2
from gpt2_jax.tokenizer import VOCAB_SIZES, write_gpt2_files

# Causal-mask buffers and the tied head: no parameters of their own.
IGNORED_HF_SUFFIXES = (".attn.bias", ".attn.masked_bias")
IGNORED_HF_KEYS = ("lm_head.weight",)


class ConversionError(UserError):
    """A checkpoint that does not map onto GPT2's params."""


def hf_key_to_path(key: str) -> tuple[str, ...]:
    """`transformer.h.0.ln_1.weight` -> ("h_0", "ln_1", "scale")."""
    parts = key.removeprefix("transformer.").split(".")
    if parts[0] == "h" and len(parts) > 1:
        parts = [f"h_{parts[1]}", *parts[2:]]
    if parts[-1] == "weight" and len(parts) > 1:
        owner = parts[-2]
        parts[-1] = "embedding" if owner in ("wte", "wpe") else "scale" if owner.startswith("ln_") else "kernel"
    return tuple(parts)


def path_to_hf_key(path: tuple[str, ...]) -> str:
    """("h_0", "ln_1", "scale") -> `transformer.h.0.ln_1.weight`."""
    parts = list(path)
    if parts[0].startswith("h_"):
        parts = ["h", parts[0][2:], *parts[1:]]
    if parts[-1] in ("kernel", "scale", "embedding"):
        parts[-1] = "weight"
    return "transformer." + ".".join(parts)


def param_shapes(config: GPT2Config) -> dict:
    """The param tree of GPT2(config) as ShapeDtypeStructs, computed without allocating."""
    ids = jax.ShapeDtypeStruct((1, 1), jnp.int32)
    return jax.eval_shape(GPT2(config).init, jax.random.key(0), ids)["params"]


def params_from_state_dict(config: GPT2Config, state_dict: dict[str, np.ndarray], progress: bool = False) -> dict:
    """Rename an HF state dict into GPT2 params, checking every key and shape."""
    expected = traverse_util.flatten_dict(param_shapes(config))
    flat = {}
    for key, value in tqdm(state_dict.items(), desc="convert", unit="tensor", disable=not progress):
        if key in IGNORED_HF_KEYS or key.endswith(IGNORED_HF_SUFFIXES):
            continue
        path = hf_key_to_path(key)
        if path not in expected:
            raise ConversionError(f"unexpected key {key!r} in checkpoint (not a GPT-2 parameter)")
        if tuple(value.shape) != expected[path].shape:
            raise ConversionError(f"{key}: shape {tuple(value.shape)} does not match config ({expected[path].shape})")
        if not np.issubdtype(value.dtype, np.floating):
            raise ConversionError(f"{key}: holds {value.dtype} values, not floating-point weights")
        if not np.isfinite(value).all():
            raise ConversionError(f"{key}: holds {np.count_nonzero(~np.isfinite(value))} NaN or infinite values")
        flat[path] = jnp.asarray(value, dtype=jnp.float32)
    missing = sorted(path_to_hf_key(p) for p in expected.keys() - flat.keys())
    if missing:
        raise ConversionError(f"checkpoint is missing {len(missing)} parameter(s), e.g. {missing[0]}")
    return traverse_util.unflatten_dict(flat)


def state_dict_from_params(config: GPT2Config, params: dict, progress: bool = False) -> dict[str, np.ndarray]:
    """GPT2 params -> HF state dict (float32; a padded vocabulary is cut to vocab_size)."""
    state_dict = {}
    flat = traverse_util.flatten_dict(params)
    for path, value in tqdm(flat.items(), desc="convert", unit="tensor", disable=not progress):
        value = np.asarray(jax.device_get(value), dtype=np.float32)
        if path == ("wte", "embedding"):
            value = value[: config.vocab_size]
        state_dict[path_to_hf_key(path)] = np.ascontiguousarray(value)
    return state_dict


def from_hf(name_or_path: str, progress: bool = False) -> tuple[GPT2Config, dict]:
    """Load an HF GPT-2 (hub name or local directory) as (GPT2Config, params)."""
    model_dir = hf_files.resolve(name_or_path)
    config = GPT2Config.from_json(model_dir / "config.json")
    try:
        return config, params_from_state_dict(config, hf_files.load_state_dict(model_dir), progress)
    except ConversionError as error:
        raise ConversionError(f"{model_dir}: {error}") from None


def to_hf(config: GPT2Config, params: dict, out_dir: str | Path, tokenizer_dir: str | Path | None = None,
          progress: bool = False, overwrite: bool = False) -> None:
    """Write config.json + model.safetensors that transformers' GPT2LMHeadModel opens.

    Like transformers, no `lm_head.weight` is stored: the head is tied to `wte`. Tokenizer
    files (vocab.json, merges.txt, ...) are copied from `tokenizer_dir` if given. `out_dir` is
    written whole; one that holds something other than an HF model is refused unless `overwrite`.
    """
    hf_files.write_hf_dir(
        Path(out_dir), config.to_dict(), state_dict_from_params(config, params, progress),
        Path(tokenizer_dir) if tokenizer_dir else None, overwrite,
    )


@exit_on_user_error
def main(argv=None):
    parser = argument_parser("convert", __doc__)
    direction = parser.add_mutually_exclusive_group(required=True)
    direction.add_argument("--from-hf", metavar="MODEL", help="HF hub name or directory to convert to Flax params")
    direction.add_argument("--to-hf", metavar="DIR", help="our params directory or training workdir to export")
    parser.add_argument("--out", required=True, help="the directory to write (written whole)")
    parser.add_argument("--tokenizer-dir", help="with --to-hf: copy vocab.json/merges.txt from here "
                        "(default: for GPT-2's vocabulary, tiktoken's files)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace --out even if it holds something else (a training workdir, other files)")
    args = parser.parse_args(argv)
    if args.from_hf:  # before any work
        outdir.refuse_other_kind(args.out, checkpoint.is_params_dir, checkpoint.PARAMS_DIR, args.overwrite)
    else:
        outdir.refuse_other_kind(args.out, hf_files.is_hf_export, hf_files.HF_DIR, args.overwrite)
    if args.from_hf:
        config, params = from_hf(args.from_hf, progress=True)
        checkpoint.save_params(args.out, config, params, args.overwrite)
    else:
        config, params = checkpoint.load_params(args.to_hf)
        with tempfile.TemporaryDirectory() as gpt2_files:
            tokenizer_dir = args.tokenizer_dir
            if not tokenizer_dir and config.vocab_size == VOCAB_SIZES["gpt2"]:
                write_gpt2_files(gpt2_files)
                tokenizer_dir = gpt2_files
            to_hf(config, params, args.out, tokenizer_dir, progress=True, overwrite=args.overwrite)
    n_params = sum(x.size for x in jax.tree.leaves(params))
    print(f"wrote {args.out}: {config.n_layer} layers, {config.n_embd} wide, {n_params:,} params")


if __name__ == "__main__":
    main()
