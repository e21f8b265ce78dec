"""Sampling speed: gpt2_jax `generate` vs transformers' PyTorch `generate`, same checkpoint.

Builds a random GPT-2 checkpoint of the given shape (124M by default) with transformers,
saves it, converts it with `from_hf`, then times top-k sampling of the same number of new
tokens on both sides (end-of-text ignored, so every run generates them all), after a warm-up
run (compilation) on each. Prints tokens/s and the ratio.

    python scripts/bench_sample.py --batch-sizes 1 8 --new-tokens 64
"""

import argparse
import dataclasses
import platform
import tempfile
import time

import jax
import numpy as np

from gpt2_jax import GPT2, from_hf, generate
from gpt2_jax.cli import HelpFormatter, at_least
from gpt2_jax.config import PRESETS


def best_time(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--preset", default="gpt2", choices=list(PRESETS), help="the model shape (GPT2Config.preset)")
    parser.add_argument("--batch-sizes", type=at_least(1), nargs="+", default=[1, 8], help="samples generated together")
    parser.add_argument("--prompt-len", type=at_least(1), default=8, help="prompt tokens")
    parser.add_argument("--new-tokens", type=at_least(1), default=64, help="tokens generated per sample")
    parser.add_argument("--repeats", type=at_least(1), default=3, help="timed runs; the best counts")
    args = parser.parse_args()
    try:  # the peer: needed to run, not to read --help
        import torch
        import transformers
    except ImportError as error:
        parser.error(f"the transformers peer needs {error.name} (pip install torch==2.13.0 transformers)")

    torch.manual_seed(0)
    hf_model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**PRESETS[args.preset])).eval()
    with tempfile.TemporaryDirectory() as model_dir:
        hf_model.save_pretrained(model_dir)
        config, params = from_hf(model_dir)
    model = GPT2(dataclasses.replace(config, eos_token_id=config.vocab_size))  # never emitted: no early stop
    rows = []
    for batch in args.batch_sizes:
        prompt = np.random.RandomState(batch).randint(0, 50000, (batch, args.prompt_len))
        keys = iter(jax.random.split(jax.random.key(0), args.repeats + 1))

        def ours():
            generate(model, params, prompt, args.new_tokens, top_k=50, rng=next(keys)).block_until_ready()

        def theirs():
            with torch.inference_mode():
                hf_model.generate(
                    torch.tensor(prompt), do_sample=True, top_k=50, max_new_tokens=args.new_tokens,
                    min_new_tokens=args.new_tokens, eos_token_id=None, pad_token_id=0,
                )

        ours(), theirs()  # warm-up: compile / first-call costs stay out of the timings
        tokens = batch * args.new_tokens
        ours_tps, theirs_tps = tokens / best_time(ours, args.repeats), tokens / best_time(theirs, args.repeats)
        rows.append((batch, ours_tps, theirs_tps))

    print(f"# {args.preset}, prompt {args.prompt_len}, {args.new_tokens} new tokens, top-k 50, fp32")
    print(f"# jax {jax.__version__} on {jax.devices()[0].platform}, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), {platform.processor() or platform.machine()}")
    print("| batch | gpt2_jax tok/s | transformers tok/s | ratio |")
    print("| ---: | ---: | ---: | ---: |")
    for batch, ours_tps, theirs_tps in rows:
        print(f"| {batch} | {ours_tps:.1f} | {theirs_tps:.1f} | {ours_tps / theirs_tps:.2f}x |")


if __name__ == "__main__":
    main()
