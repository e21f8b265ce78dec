"""Hugging Face checkpoints <-> ours, from the command line: `python -m gpt2_jax.convert`.

    python -m gpt2_jax.convert --from-hf gpt2 --out gpt2_flax          # -> config.json + params/
    python -m gpt2_jax.convert --to-hf runs/shakespeare_byte --out hf_out    # -> an HF model directory

Each takes any model reference: a hub name, an HF directory, a params directory or a training
workdir (its newest readable checkpoint). --to-hf writes config.json + model.safetensors that
transformers' GPT2LMHeadModel opens (the key map: convert.py), with the vocabulary that training
padded cut back. --out is written whole; one that holds something else is refused unless --overwrite.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import jax

from gpt2_jax import checkpoint, hf_files, outdir
from gpt2_jax.cli import argument_parser
from gpt2_jax.cli_main import exit_on_user_error
from gpt2_jax.errors import UserError
from gpt2_jax.loading import load_config, load_model, to_hf
from gpt2_jax.tokenizer import VOCAB_SIZES, write_gpt2_files


@exit_on_user_error
def main(argv=None):
    parser = argument_parser("convert", __doc__)
    direction = parser.add_mutually_exclusive_group(required=True)
    direction.add_argument("--from-hf", metavar="MODEL", help="the model to write as a params directory "
                           "(an HF hub name or directory, typically)")
    direction.add_argument("--to-hf", metavar="MODEL", help="the model to write as an HF directory "
                           "(a training workdir or params directory, typically)")
    parser.add_argument("--out", required=True, help="the directory to write (written whole)")
    parser.add_argument("--tokenizer-dir", help="with --to-hf: copy vocab.json/merges.txt from here "
                        "(default: for GPT-2's vocabulary, tiktoken's files)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace --out even if it holds something else (a training workdir, other files)")
    args = parser.parse_args(argv)
    if not args.out.strip():
        raise UserError("--out is empty: give the directory to write")
    if args.from_hf and args.tokenizer_dir:  # a params directory holds no tokenizer files: it would be ignored
        raise UserError("--tokenizer-dir is for --to-hf (an HF directory's tokenizer files); drop it with --from-hf")
    outdir.refuse_overlap(args.out, args.from_hf or args.to_hf)  # before any work
    if args.from_hf:
        outdir.refuse_other_kind(args.out, checkpoint.is_params_dir, checkpoint.PARAMS_DIR_KIND, args.overwrite)
    else:
        outdir.refuse_other_kind(args.out, hf_files.is_hf_export, hf_files.HF_DIR_KIND, args.overwrite)
        if args.tokenizer_dir:
            hf_files.check_tokenizer_dir(Path(args.tokenizer_dir), load_config(args.to_hf).vocab_size)
    loaded = load_model(args.from_hf or args.to_hf, progress=True)
    if args.from_hf:
        checkpoint.save_params(args.out, loaded.config, loaded.params, args.overwrite)
    else:
        with tempfile.TemporaryDirectory() as gpt2_files:
            tokenizer_dir = args.tokenizer_dir
            if not tokenizer_dir and loaded.config.vocab_size == VOCAB_SIZES["gpt2"]:
                write_gpt2_files(gpt2_files)
                tokenizer_dir = gpt2_files
            to_hf(loaded.config, loaded.params, args.out, tokenizer_dir, progress=True, overwrite=args.overwrite)
    n_params = sum(x.size for x in jax.tree.leaves(loaded.params))
    print(f"wrote {args.out}: {loaded.config.n_layer} layers, {loaded.config.n_embd} wide, {n_params:,} params")
