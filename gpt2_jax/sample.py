"""Sample from a GPT-2: `python -m gpt2_jax.sample --model gpt2 --prompt "Hello, I'm a language model,"`.

--model is a hub name, an HF directory, a params directory or a training workdir. One
sample streams as it is generated; several are printed when done, each under a
`---- sample i/n ----` line. Generation stops at the model's eos_token_id (GPT-2's: <|endoftext|>; null: never).
"""

from __future__ import annotations

import codecs
import contextlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from gpt2_jax import accelerator
from gpt2_jax.cli import argument_parser
from gpt2_jax.device_errors import out_of_memory_as_user_error
from gpt2_jax.cli_main import exit_on_user_error
from gpt2_jax.errors import UserError
from gpt2_jax.kv_cache import cache_bytes
from gpt2_jax.loading import load_model
from gpt2_jax.model import GPT2
from gpt2_jax.sampling import GenerationInterrupted, generate
from gpt2_jax.standard_output import StdoutError


class StreamPrinter:
    """An `on_token` callback for one sample: prints the text as it grows, in whole UTF-8 characters (an incremental
    decoder holds a character's first bytes until the rest come; each token is decoded once, not the text again)."""

    def __init__(self, tokenizer, prompt_ids, end_id: int | None):
        self.tokenizer, self.end_id, self.failure = tokenizer, end_id, None
        self.utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")  # as tokenizer.decode replaces
        self.unwritten = self.utf8.decode(tokenizer.decode_bytes(list(prompt_ids)))  # with the first token

    def __call__(self, tokens_B):
        if int(tokens_B[0]) != self.end_id:
            self.write(self.utf8.decode(self.tokenizer.decode_bytes([int(tokens_B[0])])))

    def write(self, text):
        text, self.unwritten = self.unwritten + text, ""
        if self.failure or not text:
            return
        try:
            sys.stdout.write(text)
            sys.stdout.flush()
        except (BrokenPipeError, StdoutError) as failure:  # `| head`, a full disk: raised once generation
            self.failure = failure  # reaches the host (stop_if_output_failed)

    def stop_if_output_failed(self, made: int):
        """An `on_progress` callback: a callback inside the compiled loop cannot stop it, this one can."""
        if self.failure:
            raise self.failure

    def finish(self):
        self.write(self.utf8.decode(b"", final=True) + "\n")  # an unfinished character's bytes as U+FFFD
        if self.failure:
            raise self.failure


@exit_on_user_error
def main(argv=None):
    parser = argument_parser("sample", __doc__)
    parser.add_argument("--model", default="gpt2", help="hub name, HF directory, params directory or workdir")
    parser.add_argument("--prompt", default="Hello, I'm a language model,", help="the text to continue")
    parser.add_argument("--num-samples", type=int, default=1, help="continuations of the prompt, sampled together")
    parser.add_argument("--max-new-tokens", type=int, default=30, help="tokens to add to each (fewer at <|endoftext|>)")
    parser.add_argument("--temperature", type=float, default=None, help="divides the logits; 0 is greedy (default: 1)")
    parser.add_argument("--top-k", type=int, default=None, help="sample from the k most likely tokens (default: all)")
    parser.add_argument("--top-p", type=float, default=None,
                        help="sample from the most likely tokens whose probability adds up to p (default: all)")
    parser.add_argument("--greedy", action="store_true", help="always take the most likely token (temperature 0)")
    parser.add_argument("--seed", type=int, default=0, help="the random seed: the same seed, the same samples")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="compute dtype")
    args = parser.parse_args(argv)
    if args.num_samples < 1:
        raise UserError(f"--num-samples {args.num_samples}: must be at least 1")
    if args.greedy and any(setting is not None for setting in (args.temperature, args.top_k, args.top_p)):
        raise UserError("--greedy takes the most likely token: --temperature, --top-k and --top-p would be ignored; "
                        "give one or the other")
    if not 0 <= args.seed < 2**32:
        raise UserError(f"--seed {args.seed}: must be in [0, 2**32)")
    try:
        args.prompt.encode("utf-8")
    except UnicodeEncodeError as error:  # bytes that are not UTF-8 arrive as lone surrogates
        raise UserError(f"--prompt is not valid UTF-8 (at character {error.start})") from None

    loaded = load_model(args.model)
    prompt_ids = loaded.tokenizer.encode(args.prompt)
    check_fits_memory(loaded.config, args.num_samples, len(prompt_ids), args.max_new_tokens, args.dtype)
    end_id = loaded.config.eos_token_id
    stream = StreamPrinter(loaded.tokenizer, prompt_ids, end_id) if args.num_samples == 1 else None
    progress = None

    def count(made):  # several samples print when done: until then, a progress bar
        progress.update(made - progress.n)

    length = len(prompt_ids) + args.max_new_tokens
    too_many = f"{args.num_samples} x {length} tokens: lower --num-samples or --max-new-tokens"
    try:
        with out_of_memory_as_user_error(too_many):
            prompt_BxT = np.tile(np.asarray(prompt_ids, dtype=np.int32), (args.num_samples, 1))
            progress = None if stream else tqdm(total=args.max_new_tokens, desc="sample", unit="token", leave=False)
            tokens_BxL = generate(
                GPT2(loaded.config, dtype=jnp.dtype(args.dtype)), loaded.params, prompt_BxT, args.max_new_tokens,
                temperature=0.0 if args.greedy else 1.0 if args.temperature is None else args.temperature,
                top_k=args.top_k, top_p=args.top_p,
                rng=jax.random.key(args.seed), on_token=stream,
                on_progress=stream.stop_if_output_failed if stream else count,
            )
    except GenerationInterrupted as interrupted:  # Ctrl-C (SIGTERM): print what was made, exit 130 (143; cli_main.py)
        with contextlib.suppress(OSError, StdoutError):  # a terminal gone (SIGHUP): the signal's exit code all the same
            print_samples(loaded.tokenizer, prompt_ids, interrupted.tokens_BxL, stream, progress, end_id)
        raise
    print_samples(loaded.tokenizer, prompt_ids, tokens_BxL, stream, progress, end_id)


def check_fits_memory(config, num_samples: int, prompt_length: int, max_new_tokens: int, dtype: str) -> None:
    """Refuse a batch of samples whose KV cache and fp32 logits alone exceed the device's memory (XLA
    would try, and a CPU host page to disk for hours); a smaller excess still ends in the OOM message."""
    length = prompt_length + max_new_tokens
    cached = length <= config.n_positions  # else each step reruns the model on a window: no cache
    per_sample = (cache_bytes(config, 1, length, dtype) if cached else 0) + config.vocab_size * 4  # one position's
    available = accelerator.memory_bytes()
    if available and num_samples * per_sample > available:
        raise UserError(f"--num-samples {num_samples} needs over {num_samples * per_sample / 2**30:,.1f} GiB "
                        f"({per_sample / 2**20:,.2f} MiB a sample) and the device holds {available / 2**30:,.1f}; "
                        f"at most {available // per_sample:,} samples of {length} tokens fit")


def print_samples(tokenizer, prompt_ids, tokens_BxL, stream: StreamPrinter | None, progress, end_id) -> None:
    """The rest of a streamed sample, or each sample under a `---- sample i/n ----` line, cut at `end_id`."""
    if progress is not None:
        progress.close()
    if stream:
        stream.finish()
        return
    rows = np.asarray(tokens_BxL).tolist()
    for number, row in enumerate(rows, 1):
        new = row[len(prompt_ids):]
        print(f"---- sample {number}/{len(rows)} ----")
        print(tokenizer.decode(prompt_ids + new[: new.index(end_id) if end_id in new else None]))


if __name__ == "__main__":
    main()
