"""Sampling: the KV cache, greedy parity with transformers, seeds, top-k/top-p, end-of-text, the CLI."""

import dataclasses
import functools
import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import assert_one_line_error, rel_error, run_main

from gpt2_jax import GPT2, GPT2Config, decode_loop, from_hf, generate, sample
from gpt2_jax.kv_cache import cache_bytes, init_cache
from gpt2_jax.next_token import kept_tokens, sample_next
from gpt2_jax.sampling import GenerationInterrupted, SamplingError
from gpt2_jax.tokenizer import get_tokenizer


@pytest.fixture(scope="module")
def tiny(hf_dir):
    return from_hf(str(hf_dir))


def test_kv_cache_decoding_equals_the_full_forward_at_every_position(tiny):
    config, params = tiny
    model = GPT2(config)
    decode = jax.jit(lambda ids, cache, start: model.apply({"params": params}, ids, cache, start, method=GPT2.decode))
    ids = np.random.RandomState(0).randint(0, config.vocab_size, (2, 21))
    full = model.apply({"params": params}, ids)
    for chunks in ([1] * 21, [5, 1, 7, 8]):  # token by token, and a prompt then uneven pieces
        cache, start, pieces = init_cache(config, 2, 21), 0, []
        for size in chunks:
            logits, cache = decode(ids[:, start : start + size], cache, start)
            pieces.append(logits)
            start += size
        assert rel_error(jnp.concatenate(pieces, axis=1), full) < 1e-5


def test_positions_past_the_cache_raise_or_give_nan_never_wrong_logits(tiny):
    # The cache writes at start clamped into [0, max_len - T]: unchecked, these gave finite, wrong logits.
    config, params = tiny
    model, ids = GPT2(config), np.random.RandomState(3).randint(0, config.vocab_size, (2, 4))
    decode = lambda ids, start: model.apply({"params": params}, ids, init_cache(config, 2, 10), start,
                                            method=GPT2.decode)[0]
    for start in (7, 12, -1):  # a known start: a ValueError naming the positions and the cache
        with pytest.raises(ValueError, match=rf"positions {start}\.\.{start + 3} do not fit the cache's 10"):
            decode(ids, start)
    compiled = jax.jit(decode)  # a traced start: NaN, and the same logits as the full forward where it fits
    assert all(np.isnan(compiled(ids, start)).all() for start in (7, 12, -1))
    assert rel_error(compiled(ids, 6), decode(ids, 6)) < 1e-6 and np.isfinite(compiled(ids, 6)).all()
    np.testing.assert_allclose(compiled(ids, 0), model.apply({"params": params}, ids), rtol=1e-5, atol=1e-5)
    # A cache longer than the model's 40 positions: past them there is no position embedding (it gave NaN logits
    # for every row, the positions that fit too, without a word)
    longer = lambda ids, start: model.apply({"params": params}, ids, init_cache(config, 2, 50), start,
                                            method=GPT2.decode)[0]
    with pytest.raises(ValueError, match=r"positions 38\.\.41 do not fit the model's 40 positions"):
        longer(ids, 38)
    assert np.isnan(jax.jit(longer)(ids, 38)).all()
    exact_length = model.apply({"params": params}, ids, init_cache(config, 2, 40), 36, method=GPT2.decode)[0]
    assert np.isfinite(exact_length).all() and rel_error(jax.jit(longer)(ids, 36), exact_length) < 1e-6


def test_the_prompts_pass_keeps_only_the_last_positions_logits(tiny):
    config, params = tiny
    model, ids = GPT2(config), np.random.RandomState(8).randint(0, config.vocab_size, (4, 30))
    full, _ = model.apply({"params": params}, ids, init_cache(config, 4, 40), 0, method=GPT2.decode)
    last, _ = model.apply({"params": params}, ids, init_cache(config, 4, 40), 0, True, method=GPT2.decode)
    assert last.shape == (4, 1, config.vocab_size)
    np.testing.assert_allclose(last[:, 0], full[:, -1], rtol=1e-6, atol=1e-6)
    # The compiled start of generation never holds the [B, T, vocab] logits of the whole prompt (63 MB here).
    big_vocab = GPT2(GPT2Config(vocab_size=8192, n_positions=64, n_embd=32, n_layer=2, n_head=2))
    shapes = jax.eval_shape(big_vocab.init, jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"]
    batch, prompt_length = 64, 30
    start = jax.jit(decode_loop.start, static_argnums=(0, 4)).lower(
        big_vocab, shapes, jax.ShapeDtypeStruct((batch, prompt_length), jnp.int32), jax.random.key(0), 10).compile()
    assert start.memory_analysis().temp_size_in_bytes < batch * prompt_length * 8192 * 4 / 4


def test_greedy_generate_equals_transformers(hf_model, tiny):
    config, params = tiny
    config = dataclasses.replace(config, eos_token_id=config.vocab_size)  # no early stop on either side
    prompt = np.random.RandomState(1).randint(0, config.vocab_size, (3, 6))
    ours = generate(GPT2(config), params, prompt, max_new_tokens=25, temperature=0.0)
    with torch.no_grad():
        theirs = hf_model.generate(torch.tensor(prompt), do_sample=False, max_new_tokens=25, eos_token_id=None, pad_token_id=0)
    np.testing.assert_array_equal(np.asarray(ours), theirs.numpy())


def test_past_the_context_each_step_sees_the_last_n_positions_tokens(tiny):
    config, params = tiny
    config = dataclasses.replace(config, eos_token_id=config.vocab_size)
    prompt = np.random.RandomState(6).randint(0, config.vocab_size, (2, 36))
    ours = np.asarray(generate(GPT2(config), params, prompt, max_new_tokens=20, temperature=0.0))  # 56 > 40 positions
    forward = jax.jit(lambda ids: GPT2(config).apply({"params": params}, ids))
    tokens = np.asarray(generate(GPT2(config), params, prompt, max_new_tokens=4, temperature=0.0))  # the cached path to 40
    for _ in range(16):  # then the naive loop: full forward over the last 40 tokens, argmax
        logits = forward(tokens[:, -config.n_positions :])
        tokens = np.concatenate([tokens, np.argmax(logits[:, -1], axis=-1)[:, None]], axis=1)
    np.testing.assert_array_equal(ours, tokens)


def decode_temp_bytes(model, batch, prompt_length, max_new_tokens):
    """The scratch memory of one compiled chunk of the decode loop (decode_loop.decode_chunk), from shapes alone."""
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"]
    state = jax.eval_shape(functools.partial(decode_loop.start, model, max_new_tokens=max_new_tokens), shapes,
                           jax.ShapeDtypeStruct((batch, prompt_length), jnp.int32), jax.random.key(0))
    compiled = decode_loop.decode_chunk.lower(model, shapes, state, stop=max_new_tokens, T=prompt_length,
                                      sampling=(1.0, None, None), on_token=None).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_a_padded_vocabulary_is_not_copied_at_every_decoding_step():
    # 8100 -> 8128 rows: cutting the padding from the embedding copied all of it at every token (decoding 1.8x
    # slower, measured); the head cuts it from the logits.
    model = GPT2(GPT2Config(vocab_size=8100, n_positions=64, n_embd=64, n_layer=2, n_head=2), vocab_pad_multiple=64)
    assert decode_temp_bytes(model, 2, 8, 20) < 8128 * 64 * 4 / 4


def test_past_the_context_a_step_computes_one_positions_logits_not_the_windows():
    # 8 + 100 > 64 positions: each step runs the model on a window and reads one position's logits; the
    # [2, 64, 8100] fp32 logits of the whole window (4 MB) were computed (~3x slower a token, measured).
    model = GPT2(GPT2Config(vocab_size=8100, n_positions=64, n_embd=64, n_layer=2, n_head=2))
    assert decode_temp_bytes(model, 2, 8, 100) < 2 * 64 * 8100 * 4 / 4


def test_seeded_sampling_is_reproducible_and_seeds_differ(tiny):
    config, params = tiny
    prompt = np.arange(4)[None].repeat(4, axis=0)
    run = lambda seed: np.asarray(generate(GPT2(config), params, prompt, 20, top_k=20, rng=jax.random.key(seed)))
    np.testing.assert_array_equal(run(7), run(7))
    assert not np.array_equal(run(7), run(8))


def test_top_k_and_top_p_sample_only_from_the_kept_tokens_in_proportion():
    logits_V = jnp.asarray(np.random.RandomState(2).normal(size=50) * 2, jnp.float32)
    probs_V = np.asarray(jax.nn.softmax(logits_V), np.float64)
    order = np.argsort(-probs_V)

    def nucleus(candidates, p):  # the smallest most-likely set whose renormalised mass reaches p
        mass = np.cumsum(probs_V[candidates]) / probs_V[candidates].sum()
        return candidates[: np.searchsorted(mass, p) + 1]

    # transformers' order: top-k first, then top-p over what top-k kept
    cases = {"top_k": (dict(top_k=5, top_p=None), order[:5]), "top_p": (dict(top_k=None, top_p=0.7), nucleus(order, 0.7)),
             "both": (dict(top_k=3, top_p=0.7), nucleus(order[:3], 0.7))}
    for name, (kwargs, kept) in cases.items():
        draws = sample_next(jnp.tile(logits_V, (20000, 1)), jax.random.key(3), 1.0, **kwargs)
        counts = np.bincount(np.asarray(draws), minlength=50)
        assert set(np.nonzero(counts)[0]) <= set(kept.tolist()), name
        expected = probs_V[kept] / probs_V[kept].sum()
        np.testing.assert_allclose(counts[kept] / counts.sum(), expected, atol=0.015, err_msg=name)


def kept_distribution(logits_BxV, top_k, top_p):
    """The probabilities top-k and top-p leave each token, read from next_token.kept_tokens (float64)."""
    kept, out_BxV = kept_tokens(jnp.asarray(logits_BxV), top_k, top_p), np.zeros(logits_BxV.shape)
    for row, (logits_K, ids_K, tail, tail_logit) in enumerate(zip(*map(np.asarray, kept))):
        tied_ids = np.nonzero(logits_BxV[row] == tail_logit)[0]
        tail_ids = tied_ids[(logits_K == tail_logit).sum():][:tail]  # the tied tokens past the candidates, by id
        out_BxV[row, ids_K] = np.exp(logits_K.astype(np.float64) - logits_K.max())
        out_BxV[row, tail_ids] = np.exp(np.float64(tail_logit) - logits_K.max())
    return out_BxV / out_BxV.sum(-1, keepdims=True)


def transformers_distribution(logits_BxV, top_k, top_p):
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    scores = torch.tensor(logits_BxV)
    scores = TopKLogitsWarper(top_k)(None, scores) if top_k else scores
    scores = TopPLogitsWarper(top_p)(None, scores) if top_p else scores
    return torch.softmax(scores.double(), -1).numpy()


@pytest.mark.parametrize("top_k, top_p", [(10, None), (50, None), (200, None), (50, 0.9), (200, 0.5)])
def test_top_k_keeps_every_token_tied_with_the_kth_as_transformers(top_k, top_p):
    """bf16 logits tie at the k-th at most steps (73% of rows at k=50 here): lax.top_k kept exactly k, the lower ids."""
    logits_BxV = np.asarray(jnp.asarray(np.random.RandomState(6).normal(size=(8, 50257)) * 2, jnp.bfloat16), np.float32)
    ours, theirs = kept_distribution(logits_BxV, top_k, top_p), transformers_distribution(logits_BxV, top_k, top_p)
    if top_p is None:
        np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-15)
    else:  # a tie cut by top-p: as many kept, each as likely; which ids is each sort's own order (ours: the lower)
        np.testing.assert_allclose(np.sort(ours), np.sort(theirs), rtol=1e-5, atol=1e-9)
        assert ((ours > 0).sum(-1) == (theirs > 0).sum(-1)).all()


def test_tokens_tied_with_the_kth_are_drawn_in_proportion():
    logits_V = np.array([3.0, 0.5, 1.0, 2.0, 1.0, 1.0, -1.0, 1.0, 1.0, 0.0], np.float32)  # five tie at the 3rd
    expected = {(3, None): transformers_distribution(logits_V[None], 3, None)[0],
                (3, 0.8): transformers_distribution(logits_V[None], 3, 0.8)[0]}
    for (top_k, top_p), probs_V in expected.items():
        draws = sample_next(jnp.tile(jnp.asarray(logits_V), (40000, 1)), jax.random.key(7), 1.0, top_k, top_p)
        frequencies = np.bincount(np.asarray(draws), minlength=10) / 40000
        assert set(np.nonzero(frequencies)[0]) == set(np.nonzero(probs_V)[0]) or top_p, (top_k, top_p)
        np.testing.assert_allclose(np.sort(frequencies), np.sort(probs_V), atol=0.01, err_msg=str((top_k, top_p)))


def test_top_p_one_keeps_every_token(tiny):
    """float32's running mass reached 1 before the tail: top_p=1 dropped tokens (transformers adds no filter)."""
    peaked_BxV = np.random.RandomState(8).normal(size=(2, 50257)).astype(np.float32) * 15
    assert (kept_distribution(peaked_BxV, None, 1.0) > 0).all()
    config, params = tiny  # and the draws are those without top-p
    prompt, settings = np.random.RandomState(8).randint(0, config.vocab_size, (4, 3)), dict(rng=jax.random.key(9))
    np.testing.assert_array_equal(generate(GPT2(config), params, prompt, 8, top_p=1.0, **settings),
                                  generate(GPT2(config), params, prompt, 8, top_p=None, **settings))


def test_temperature_scales_the_distribution_and_zero_is_argmax():
    logits_V = jnp.asarray(np.random.RandomState(4).normal(size=30), jnp.float32)
    logits_NxV = jnp.tile(logits_V, (20000, 1))
    np.testing.assert_array_equal(sample_next(logits_NxV[:3], jax.random.key(0), 0.0, None, None), [jnp.argmax(logits_V)] * 3)
    draws = sample_next(logits_NxV, jax.random.key(1), 0.5, None, None)
    frequencies = np.bincount(np.asarray(draws), minlength=30) / 20000
    np.testing.assert_allclose(frequencies, jax.nn.softmax(logits_V / 0.5), atol=0.015)


@pytest.mark.parametrize("top_k, top_p", [(None, None), (3, None), (None, 0.5)])
def test_a_tiny_temperature_is_argmax_not_the_first_token_past_float32(top_k, top_p):
    """logits / 1e-40 made every positive logit inf in float32: token 0 was drawn, not the most likely."""
    logits_BxV = jnp.array([[5.0, 1.0, 10.0, -3.0]] * 8)
    for temperature in (1e-40, 1e-300):
        np.testing.assert_array_equal(sample_next(logits_BxV, jax.random.key(0), temperature, top_k, top_p), [2] * 8)


def test_end_of_text_fills_the_row_and_stops_the_loop(tiny):
    config, params = tiny
    prompt = np.random.RandomState(5).randint(0, config.vocab_size, (1, 5))
    never_ends = GPT2(dataclasses.replace(config, eos_token_id=config.vocab_size))
    free = np.asarray(generate(never_ends, params, prompt, 12, temperature=0.0))
    eos = int(free[0, 5 + 3])  # the 4th greedy token becomes end-of-text
    first = list(free[0, 5:]).index(eos)
    steps = []
    out = np.asarray(generate(GPT2(dataclasses.replace(config, eos_token_id=eos)), params, prompt, 12, temperature=0.0,
                              on_token=lambda tokens: steps.append(int(tokens[0]))))
    np.testing.assert_array_equal(out[0, : 5 + first + 1], free[0, : 5 + first + 1])
    assert (out[0, 5 + first :] == eos).all()
    assert len(steps) == first + 1  # no steps after every row has ended


def test_a_generation_compiles_its_two_programs_once_and_nothing_else(tiny, caplog):
    config, params = tiny
    prompt = np.random.RandomState(5).randint(0, config.vocab_size, (3, 5)).astype(np.int32)
    free = np.asarray(generate(GPT2(dataclasses.replace(config, eos_token_id=config.vocab_size)), params, prompt[:1],
                               12, temperature=0.0))
    model = GPT2(dataclasses.replace(config, eos_token_id=int(free[0, 5 + 2])))  # may end rows early: not all
    keys = [jax.random.key(seed) for seed in (1, 2)]  # made first: jax.random's own programs are not generate's
    decode_loop.start.clear_cache(), decode_loop.decode_chunk.clear_cache()  # an earlier test's programs may fit
    with jax.log_compiles(), caplog.at_level("WARNING"):
        for key in keys:  # a second call, other draws: no retrace
            generate(model, params, prompt, 12, top_k=5, rng=key).block_until_ready()
        generate(model, params, prompt[:1], 12, temperature=0.0).block_until_ready()  # its only row ends early
    compiled = re.findall(r"Compiling jit\((\w+)\)", caplog.text)
    # One pair for 3 rows sampled (twice), one for 1 row greedy; nothing after the loop (rows that end early).
    assert [name for name in compiled if name != "atleast_2d"] == ["start", "decode_chunk"] * 2, compiled


def test_progress_is_reported_per_chunk_up_to_the_tokens_made(tiny):
    config, params = tiny
    prompt = np.random.RandomState(6).randint(0, config.vocab_size, (3, 4))
    model = GPT2(dataclasses.replace(config, eos_token_id=config.vocab_size))  # never ends early
    made = []
    generate(model, params, prompt, 40, on_progress=made.append)
    assert made == sorted(made) and made[-1] == 40 and len(made) <= 40


def test_bad_prompts_and_settings_raise(tiny):
    config, params = tiny
    with pytest.raises(SamplingError, match="empty"):
        generate(GPT2(config), params, np.zeros((1, 0), np.int32), 5)
    with pytest.raises(SamplingError, match="the prompt of 41 tokens is longer than the context of 40 tokens"):
        generate(GPT2(config), params, np.zeros((1, 41), np.int32), 1)
    with pytest.raises(SamplingError, match="top_p"):
        generate(GPT2(config), params, np.zeros((1, 3), np.int32), 5, top_p=1.5)


@pytest.mark.parametrize("prompt, message", [
    (np.array([[1, 101, 3]]), "the prompt holds ids 1 to 101; the model's tokens are 0 to 100"),  # was NaN logits: 0s
    (jnp.array([[1, -1, 3]]), "the prompt holds ids -1 to 3"),  # was read as the last token, 100
    (np.array([[1, 2**33]]), "the prompt holds ids 1 to 8589934592"),  # was cast to int32: token 0
    (np.array([[1.0, 2.7]]), "the prompt must be token ids, [T] or [B, T] integers, not float64 (1, 2)"),  # truncated
    (np.zeros((1, 2, 3), np.int32), "not int32 (1, 2, 3)"),  # was 'too many values to unpack'
])
def test_a_prompt_that_is_not_the_models_token_ids_is_refused(tiny, prompt, message):
    config, params = tiny
    with pytest.raises(SamplingError, match=re.escape(message)):
        generate(GPT2(config), params, prompt, 3)


@pytest.mark.parametrize("settings, message", [
    (dict(max_new_tokens=2.5), "max_new_tokens=2.5 must be an integer"),  # was a TypeError in jax
    (dict(top_k=2.5), "top_k=2.5 must be an integer"),  # was a TypeError in jax.lax.top_k
    (dict(temperature=None), "temperature=None must be a number"),
    (dict(rng=0), "rng must be one JAX random key, jax.random.key(seed), not 0"),  # was 'invalid PRNG key data'
    (dict(rng=jax.random.split(jax.random.key(0))), "not an array of key<fry>, shape (2,)"),
])
def test_settings_of_the_wrong_kind_are_refused(tiny, settings, message):
    config, params = tiny
    with pytest.raises(SamplingError, match=re.escape(message)):
        generate(GPT2(config), params, np.zeros((1, 3), np.int32), **{"max_new_tokens": 3, **settings})


def test_numpy_and_jax_scalars_are_settings_like_python_numbers(tiny):
    config, params = tiny
    prompt, key = np.zeros((2, 3), np.int32), jax.random.key(4)
    python = generate(GPT2(config), params, prompt, 5, temperature=0.7, top_k=9, top_p=0.9, rng=key)
    arrays = generate(GPT2(config), params, prompt, np.int64(5), temperature=jnp.float32(0.7), top_k=np.int32(9),
                      top_p=np.float64(0.9), rng=key)  # a JAX scalar was 'Non-hashable static arguments'
    np.testing.assert_array_equal(arrays, python)
    legacy = generate(GPT2(config), params, prompt, 5, rng=jax.random.PRNGKey(4))  # the older key still works
    np.testing.assert_array_equal(legacy, generate(GPT2(config), params, prompt, 5, rng=jax.random.wrap_key_data(
        jax.random.key_data(key))))


def run_sample(*args):
    return subprocess.run([sys.executable, "-m", "gpt2_jax.sample", *args], capture_output=True, text=True)


def test_cli_greedy_prints_what_transformers_generates(bpe_model_dir):
    import transformers

    prompt = "Hello, I'm a language model,"
    tokenizer = get_tokenizer("gpt2")
    model = transformers.GPT2LMHeadModel.from_pretrained(bpe_model_dir).eval()
    with torch.no_grad():
        tokens = model.generate(torch.tensor([tokenizer.encode(prompt)]), do_sample=False, max_new_tokens=20,
                                eos_token_id=50256, pad_token_id=50256)[0].tolist()
    expected = tokenizer.decode([t for t in tokens if t != 50256])
    streamed = run_sample("--model", str(bpe_model_dir), "--prompt", prompt, "--greedy", "--max-new-tokens", "20")
    assert streamed.returncode == 0, streamed.stderr
    assert streamed.stdout == expected + "\n"
    batch = run_sample("--model", str(bpe_model_dir), "--prompt", prompt, "--greedy", "--max-new-tokens", "20", "--num-samples", "3")
    assert batch.stdout == "".join(f"---- sample {i}/3 ----\n{expected}\n" for i in (1, 2, 3))


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="/dev/full stands for a full disk")
@pytest.mark.parametrize("count, new", [("1", "5"), ("2", "5"), ("1", "0")], ids=["streamed", "batched", "prompt"])
def test_cli_output_that_cannot_be_written_is_one_line(bpe_model_dir, count, new):
    """`sample ... > out.txt` on a full disk: the streamed write failed inside the compiled loop's callback, a
    traceback from XLA's runtime; a batch's, a traceback of Python's; the prompt alone, exit 0 with nothing."""
    with open("/dev/full", "w") as full:
        result = subprocess.run([sys.executable, "-m", "gpt2_jax.sample", "--model", str(bpe_model_dir),
                                 "--max-new-tokens", new, "--num-samples", count], stdout=full, stderr=subprocess.PIPE,
                                text=True)
    assert_one_line_error(result, "sample: error: cannot write to standard output: No space left on device")


def test_cli_samples_five_ways_reproducibly(bpe_model_dir):
    args = ["--model", str(bpe_model_dir), "--num-samples", "5", "--max-new-tokens", "10", "--top-k", "50", "--seed", "42"]
    first, again = run_main(sample.main, *args), run_main(sample.main, *args)
    assert first.returncode == 0 and first.stdout == again.stdout
    samples = re.split(r"^---- sample [1-5]/5 ----\n", first.stdout, flags=re.MULTILINE)
    assert samples[0] == "" and len(samples) == 6 and all(s.startswith("Hello, I'm a language model,") for s in samples[1:])
    assert len(set(samples[1:])) > 1


@pytest.mark.parametrize("args, message", [
    (["--prompt", ""], "the prompt is empty"),
    (["--prompt", "word " * 70], "longer than the context of 64 tokens"),
    (["--model", "/no/such/model"], "no such directory"),
    (["--top-p", "0"], "top_p"),
    (["--max-new-tokens", "-5"], "max_new_tokens=-5 must be in [0, 1,000,000]"),
    (["--max-new-tokens", "1e12"], "argument --max-new-tokens: invalid int value: '1e12'"),
    (["--max-new-tokens", str(10**12)], "max_new_tokens=1000000000000 must be in [0, 1,000,000]"),
    (["--num-samples", "-2"], "--num-samples -2: must be at least 1"),
    (["--num-samples", "0"], "--num-samples 0: must be at least 1"),
    (["--num-samples", str(10**12)], "--num-samples 1000000000000 needs over"),
    (["--temperature", "nan"], "temperature=nan must be 0 (greedy) or positive"),
    (["--temperature", "inf"], "temperature=inf must be 0 (greedy) or positive"),
    (["--top-k", "0"], "top_k=0 must be at least 1 (unset: every token)"),
    (["--seed", str(10**20)], "--seed 100000000000000000000: must be in [0, 2**32)"),
    (["--greedy", "--temperature", "0.5"], "--greedy takes the most likely token: --temperature, --top-k and --top-p "
                                           "would be ignored"),  # was: ignored without a word
    (["--greedy", "--top-k", "5"], "--greedy takes the most likely token"),
])
def test_cli_errors_are_one_line(bpe_model_dir, args, message):
    assert_one_line_error(run_main(sample.main, "--model", str(bpe_model_dir), *args), message)


def test_cache_bytes_is_the_size_of_the_cache(tiny):
    config = tiny[0]
    for dtype in (jnp.float32, jnp.bfloat16):
        made = sum(leaf.nbytes for leaf in jax.tree.leaves(init_cache(config, 3, 10, dtype)))
        assert cache_bytes(config, 3, 10, dtype) == made > 0


@pytest.mark.parametrize("error, says", [
    (jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1.2GiB."),
     "out of memory on cpu (RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1.2GiB.); "),
    (MemoryError(), "out of host memory; "),
])
def test_running_out_of_memory_is_one_line(bpe_model_dir, monkeypatch, error, says):
    def out_of_memory(*args, **kwargs):  # what a batch of samples that passes the estimate but not the device meets
        raise error

    monkeypatch.setattr(sample, "generate", out_of_memory)
    assert_one_line_error(run_main(sample.main, "--model", str(bpe_model_dir), "--num-samples", "4"),
                          says + "4 x 38 tokens: lower --num-samples or --max-new-tokens")


def test_a_prompt_that_is_not_utf8_is_one_line(byte_model_dir):
    result = subprocess.run([sys.executable, "-m", "gpt2_jax.sample", "--model", str(byte_model_dir), "--prompt",
                             b"ROMEO\xff\xfe:"], capture_output=True, text=True)
    assert_one_line_error(result, "--prompt is not valid UTF-8 (at character 5)")


def test_ctrl_c_stops_generate_between_chunks_with_what_was_made(tiny):
    config, params = tiny
    config = dataclasses.replace(config, eos_token_id=config.vocab_size)  # no early stop
    made = []

    def press_ctrl_c_at_the_fifth_token(tokens_B):
        made.append(np.asarray(tokens_B))
        if len(made) == 5:
            os.kill(os.getpid(), signal.SIGINT)

    prompt = np.random.RandomState(7).randint(0, config.vocab_size, (2, 6))
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # as in a CLI or a notebook
    with pytest.raises(GenerationInterrupted) as interrupted:
        generate(GPT2(config), params, prompt, 20_000, temperature=0.0, on_token=press_ctrl_c_at_the_fifth_token)
    tokens = interrupted.value.tokens_BxL
    assert 5 <= tokens.shape[1] - 6 == len(made) < 20_000
    np.testing.assert_array_equal(tokens[:, 6:], np.stack(made, axis=1))
    greedy = np.asarray(generate(GPT2(config), params, prompt, len(made), temperature=0.0))
    np.testing.assert_array_equal(tokens, greedy)  # what was made is what an uninterrupted run makes
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def interrupt_sampling(model_dir, started, *args, signum=signal.SIGINT):
    """Start a long sampling run, press Ctrl-C once stderr + stdout satisfy `started`; (result, seconds to exit)."""
    process = subprocess.Popen([sys.executable, "-m", "gpt2_jax.sample", "--model", str(model_dir), "--prompt",
                                "Hello", "--max-new-tokens", "1000000", "--seed", "3", *args],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen = {process.stdout: b"", process.stderr: b""}
    try:
        while not started(*seen.values()):
            ready, _, _ = select.select(list(seen), [], [], 120)
            assert ready and process.poll() is None, seen
            for pipe in ready:
                seen[pipe] += os.read(pipe.fileno(), 4096)
        pressed = time.perf_counter()
        process.send_signal(signum)
        stdout, stderr = process.communicate(timeout=30)
        seconds = time.perf_counter() - pressed
    finally:
        process.kill()
    return subprocess.CompletedProcess(process.args, process.returncode, seen[process.stdout] + stdout,
                                       seen[process.stderr] + stderr), seconds


def test_ctrl_c_stops_the_cli_within_a_second_printing_what_was_made(bpe_model_dir):
    streamed, seconds = interrupt_sampling(bpe_model_dir, lambda out, err: len(out) > 40)
    assert streamed.returncode == 130 and streamed.stderr.decode().endswith("interrupted\n"), streamed.stderr
    assert seconds < 3  # ~0.6 s measured: a chunk of the compiled loop (<= 0.4 s) and the interpreter's exit
    text = streamed.stdout.decode()
    assert text.startswith("Hello") and len(text) > 40 and text.endswith("\n")
    batch, _ = interrupt_sampling(bpe_model_dir, lambda out, err: re.search(rb"\| *[1-9][0-9]*/1000000", err) is not None,
                                  "--num-samples", "2")
    assert batch.returncode == 130, batch.stderr
    samples = re.split(r"^---- sample [12]/2 ----\n", batch.stdout.decode(), flags=re.MULTILINE)
    assert samples[0] == "" and len(samples) == 3
    assert all(sample.startswith("Hello") and len(sample) > len("Hello\n") for sample in samples[1:])


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_stop_signal_stops_the_cli_as_ctrl_c_does(bpe_model_dir, signum):
    """was: the streamed line left open (the message ran onto it) and a batch's samples lost"""
    streamed, _ = interrupt_sampling(bpe_model_dir, lambda out, err: len(out) > 40, signum=signum)
    assert streamed.returncode == 128 + signum, streamed.stderr
    assert streamed.stderr.decode().endswith(f"stopped by {signum.name}\n"), streamed.stderr
    assert streamed.stdout.decode().startswith("Hello") and streamed.stdout.decode().endswith("\n")
    some_made = lambda out, err: re.search(rb"\| *[1-9][0-9]*/1000000", err) is not None  # noqa: E731
    batch, _ = interrupt_sampling(bpe_model_dir, some_made, "--num-samples", "2", signum=signum)
    assert batch.returncode == 128 + signum and batch.stdout.decode().count("---- sample ") == 2, batch.stderr


def test_the_streamed_sample_prints_whole_characters_and_ends_as_the_whole_decode(monkeypatch):
    """Each token is decoded once (it was the whole text again at every token: quadratic in the sample's length),
    a character split over tokens waits for its last byte, and the printed text is tokenizer.decode's."""
    from gpt2_jax.sample import StreamPrinter

    tokenizer, written = get_tokenizer("byte"), []
    monkeypatch.setattr(sys, "stdout", type("Recorder", (), {"write": lambda self, text: written.append(text),
                                                            "flush": lambda self: None})())
    prompt, new = list("héllo ".encode()), [*"→✓".encode(), 0xFF, tokenizer.eot_token, *"é".encode(), 0xE2, 0x86]
    printer = StreamPrinter(tokenizer, prompt, tokenizer.eot_token)
    printed_after = []
    for token in new:
        printer(np.array([token]))
        printed_after.append("".join(written))
    printer.finish()
    assert printed_after[:3] == ["héllo ", "héllo ", "héllo →"]  # the arrow's three bytes, then the arrow
    assert printed_after[6] == "héllo →✓\ufffd"  # an invalid byte: replaced at once
    assert "".join(written) == tokenizer.decode(prompt + [t for t in new if t != tokenizer.eot_token]) + "\n"
    assert "".join(written).endswith("é\ufffd\n")  # the unfinished character, as decode replaces it


@pytest.mark.parametrize("end_id", [256, None])
def test_a_sample_prints_the_same_text_streamed_as_printed_whole(end_id, capsys):
    """Cut at the model's end id (none: a model whose eos_token_id is null runs past <|endoftext|>); streamed, it
    dropped end-of-text and printed on, printed whole it cut there."""
    from gpt2_jax.sample import StreamPrinter, print_samples

    tokenizer, prompt = get_tokenizer("byte"), list(b"ab")
    after = [ord("d"), ord("e")] if end_id is None else [end_id, end_id]  # generate fills an ended row with its id
    new = [ord("c"), tokenizer.eot_token, *after]
    printer = StreamPrinter(tokenizer, prompt, end_id)
    for token in new:
        printer(np.array([token]))
    print_samples(tokenizer, prompt, np.array([prompt + new]), printer, None, end_id)
    streamed = capsys.readouterr().out
    print_samples(tokenizer, prompt, np.array([prompt + new]), None, None, end_id)
    assert capsys.readouterr().out == "---- sample 1/1 ----\n" + streamed
    assert streamed == ("abc\n" if end_id is not None else tokenizer.decode(prompt + new) + "\n")
