"""Tokenizers: tiktoken's GPT-2 BPE, the same from an HF directory's files, and bytes."""

import pytest

from gpt2_jax.tokenizer import TokenizerError, get_tokenizer, tokenizer_for_vocab, write_gpt2_files

TEXT = "Hello, I'm a language model, naïve café 😀\n  indented"


def test_gpt2_bpe_known_ids_and_round_trip():
    tokenizer = get_tokenizer("gpt2")
    assert tokenizer.encode("Hello, world") == [15496, 11, 995]
    assert tokenizer.decode(tokenizer.encode(TEXT)) == TEXT
    assert (tokenizer.vocab_size, tokenizer.eot_token) == (50257, 50256)
    assert tokenizer.encode("<|endoftext|>") != [50256]  # plain text: special tokens are not parsed


@pytest.mark.parametrize("name", ["gpt2", "byte"])
def test_encode_array_is_encode_as_an_array(name):  # what prepare's workers call, for speed and memory
    tokenizer = get_tokenizer(name)
    lone_surrogate = ["a lone surrogate \ud800, as JSON allows"] if name == "gpt2" else []  # bytes: an error
    for text in [TEXT, "", "<|endoftext|> as text", *lone_surrogate]:
        assert tokenizer.encode_array(text).tolist() == tokenizer.encode(text)


def test_hf_vocab_files_give_the_same_tokens(tmp_path):
    write_gpt2_files(tmp_path)  # vocab.json + merges.txt from tiktoken's files, found as the package finds them
    local = get_tokenizer("gpt2", hf_dir=tmp_path)
    assert local.encode(TEXT) == get_tokenizer("gpt2").encode(TEXT) == local.encode_array(TEXT).tolist()
    assert local.eot_token == 50256


def test_hf_vocab_files_are_read_as_they_are_now_and_copied_nowhere(tmp_path, monkeypatch):
    """tiktoken copied them into its cache (../shared/data/tiktoken, or /tmp/data-gym-cache), keyed by their path:
    a cache polluted by every model directory read, and the old files read back after they changed."""
    import os
    import shutil

    cache = tmp_path / "cache"
    shutil.copytree(os.environ.get("TIKTOKEN_CACHE_DIR") or pytest.skip("no tiktoken cache here"), cache)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    before = sorted(p.name for p in cache.iterdir())
    (tmp_path / "model").mkdir()
    write_gpt2_files(tmp_path / "model")
    assert get_tokenizer("gpt2", hf_dir=tmp_path / "model").encode("Hello, world") == [15496, 11, 995]
    assert sorted(p.name for p in cache.iterdir()) == before and os.environ["TIKTOKEN_CACHE_DIR"] == str(cache)
    (tmp_path / "model" / "vocab.json").write_text("{")
    with pytest.raises(TokenizerError, match="vocab.json \\+ merges.txt are not GPT-2's BPE files"):
        get_tokenizer("gpt2", hf_dir=tmp_path / "model").encode(TEXT)
    assert os.environ["TIKTOKEN_CACHE_DIR"] == str(cache)  # given back after a failure too
    monkeypatch.delenv("TIKTOKEN_CACHE_DIR")  # and left unset where it was
    with pytest.raises(TokenizerError):
        get_tokenizer("gpt2", hf_dir=tmp_path / "model").encode(TEXT)
    assert "TIKTOKEN_CACHE_DIR" not in os.environ


@pytest.mark.parametrize("name, text", [("vocab.json", "{"), ("vocab.json", "[1, 2]"), ("vocab.json", '{"a": 0}'),
                                        ("merges.txt", "\udcff garbage")])
def test_damaged_hf_vocab_files_are_one_line(tmp_path, name, text):
    write_gpt2_files(tmp_path)
    (tmp_path / name).write_text(text, errors="surrogateescape")  # tiktoken's own errors were tracebacks
    with pytest.raises(TokenizerError, match="vocab.json \\+ merges.txt are not GPT-2's BPE files"):
        get_tokenizer("gpt2", hf_dir=tmp_path).encode(TEXT)


def test_offline_without_tiktokens_files_says_what_to_do_there(tmp_path, monkeypatch):
    """A model's directory can hold the two files; data (prepare, a run) has no such place to name."""
    import tiktoken

    def offline(name):
        raise OSError("no network")

    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    with pytest.raises(TokenizerError) as error:
        get_tokenizer("gpt2")
    assert "set TIKTOKEN_CACHE_DIR" in str(error.value) and "vocab.json" not in str(error.value)
    with pytest.raises(TokenizerError, match=f"or put GPT-2's vocab.json \\+ merges.txt in {tmp_path}"):
        get_tokenizer("gpt2", hf_dir=tmp_path)


def test_bytes_round_trip_and_end_of_text():
    tokenizer = get_tokenizer("byte")
    ids = tokenizer.encode(TEXT)
    assert ids == list(TEXT.encode("utf-8")) and tokenizer.decode(ids + [256]) == TEXT
    assert (tokenizer.vocab_size, tokenizer.eot_token) == (257, 256)


def test_tokenizer_follows_the_vocabulary_size():
    assert tokenizer_for_vocab(257).name == "byte" and tokenizer_for_vocab(50257).name == "gpt2"
    with pytest.raises(TokenizerError, match="vocab_size=101 matches no known tokenizer"):
        tokenizer_for_vocab(101)
    with pytest.raises(TokenizerError, match="unknown tokenizer 'sentencepiece'"):
        get_tokenizer("sentencepiece")


@pytest.mark.parametrize("name", ["gpt2", "byte"])
def test_every_token_stands_for_its_bytes_and_end_of_text_for_none(name):
    tokenizer = get_tokenizer(name)
    ids = tokenizer.encode(TEXT)  # GPT-2 BPE splits 😀's four bytes over tokens: byte strings, not characters
    token_bytes = tokenizer.token_bytes()
    assert b"".join(tokenizer.decode_bytes([i]) for i in ids) == tokenizer.decode_bytes(ids) == TEXT.encode("utf-8")
    assert token_bytes[ids].sum() == len(TEXT.encode("utf-8")) and token_bytes[tokenizer.eot_token] == 0
    assert token_bytes.shape == (tokenizer.vocab_size,) and token_bytes[: tokenizer.eot_token].min() >= 1
