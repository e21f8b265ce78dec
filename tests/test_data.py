"""Data: preparation from every input kind, the split, resuming, the grain pipeline, damaged shards."""

import contextlib
import errno
import json
import os
import re
import signal
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from conftest import SHAKESPEARE, assert_one_line_error, read_only, unprivileged

from gpt2_jax import shards
from gpt2_jax.corpus import count_documents
from gpt2_jax.data import TextWindows, WindowSource, eval_batches, read_documents, read_split, train_iterator
from gpt2_jax.prepare import prepare
from gpt2_jax.tokenizer import get_tokenizer


def tokens_of(data_dir):
    meta = shards.read_meta(data_dir)
    return np.concatenate([np.load(data_dir / s["file"]) for s in meta["shards"]]), meta


def test_documents_are_joined_by_end_of_text(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("first doc")
    (tmp_path / "docs" / "b.jsonl").write_text(json.dumps({"text": "second"}) + "\n\n" + json.dumps({"text": "third"}) + "\n")
    prepare([str(tmp_path / "docs")], tmp_path / "out", tokenizer="gpt2", val_fraction=0.0)
    tokens, meta = tokens_of(tmp_path / "out")
    bpe = get_tokenizer("gpt2")
    expected = bpe.encode("first doc") + [50256] + bpe.encode("second") + [50256] + bpe.encode("third")
    assert tokens.tolist() == expected and tokens.dtype == np.uint16
    assert meta["documents"] == 3 and meta["splits"]["val"] == []
    assert count_documents([str(tmp_path / "docs")]) == 3  # the progress bar's total, counted as prepare counts
    assert count_documents(["hf:some/dataset"]) is None and count_documents([str(tmp_path / "none")]) is None


def test_parquet_input(tmp_path):
    pyarrow = pytest.importorskip("pyarrow")
    import pyarrow.parquet as parquet

    parquet.write_table(pyarrow.table({"content": ["alpha", "beta"]}), tmp_path / "t.parquet")
    prepare([str(tmp_path / "t.parquet")], tmp_path / "out", tokenizer="byte", val_fraction=0.0, text_field="content")
    assert tokens_of(tmp_path / "out")[0].tolist() == list(b"alpha") + [256] + list(b"beta")
    assert count_documents([str(tmp_path / "t.parquet")]) == 2


def test_preparing_holds_no_list_of_a_documents_ids_nor_a_copy_of_its_shard_nor_a_whole_parquet_file(tmp_path):
    pyarrow = pytest.importorskip("pyarrow")
    import pyarrow.parquet as parquet

    text = open(SHAKESPEARE, encoding="utf-8").read() * 2  # 2.2 MB, one document: ~680k ids (a list: 36 B each)
    (tmp_path / "big.txt").write_text(text)
    parquet.write_table(pyarrow.table({"text": [text[i:i + 500] for i in range(0, len(text), 500)]}),
                        tmp_path / "t.parquet")  # one row group of 4,462 rows
    get_tokenizer("gpt2")  # tiktoken's tables loaded (and kept) before measuring
    tracemalloc.start()  # numpy's arrays and Python's objects; not pyarrow's buffers, nor tiktoken's own
    try:
        prepare([str(tmp_path / "big.txt")], tmp_path / "txt", tokenizer="gpt2", workers=1)
        txt_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        prepare([str(tmp_path / "t.parquet")], tmp_path / "parquet", tokenizer="byte", shard_tokens=100_000)
        parquet_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    ids = tokens_of(tmp_path / "txt")[0].size
    assert txt_peak < 2 * len(text) + 8 * ids, (txt_peak, ids)  # its text read, decoded; ids as uint32, uint16
    assert parquet_peak < len(text) / 2, parquet_peak  # rows a batch at a time, not 2.2 MB of strings at once


def test_shakespeare_split_is_nanogpts(tmp_path):
    meta = prepare([SHAKESPEARE], tmp_path, tokenizer="byte", val_fraction=0.1)
    n = len(open(SHAKESPEARE, "rb").read())
    assert meta["splits"] == {"train": [{"file": "shard_000000.npy", "start": 0, "stop": int(n * 0.9)}],
                              "val": [{"file": "shard_000000.npy", "start": int(n * 0.9), "stop": n}]}


def test_the_split_crosses_shards_and_windows_never_do(tmp_path):
    texts = [f"document number {i} " * (i + 3) for i in range(12)]
    for i, text in enumerate(texts):
        (tmp_path / f"{i:02d}.txt").write_text(text)
    meta = prepare([str(tmp_path / f"{i:02d}.txt") for i in range(12)], tmp_path / "out", tokenizer="byte",
                   val_fraction=0.3, shard_tokens=200)
    assert len(meta["shards"]) > 2
    total = sum(s["tokens"] for s in meta["shards"])
    sizes = {k: sum(s["stop"] - s["start"] for s in v) for k, v in meta["splits"].items()}
    assert sizes == {"train": int(total * 0.7), "val": total - int(total * 0.7)}
    all_tokens, _ = tokens_of(tmp_path / "out")
    val = WindowSource(tmp_path / "out", "val", block_size=16)
    windows = [val[i] for i in range(len(val))]
    tail = all_tokens[int(total * 0.7):]
    assert all(any((tail[j : j + 17] == w).all() for j in range(len(tail) - 16)) for w in windows)
    assert [s["file"] for s in meta["splits"]["val"]] != [meta["splits"]["val"][0]["file"]]  # val spans shards
    assert (read_split(tmp_path / "out", "val")[1] == tail).all()
    assert (read_split(tmp_path / "out", "val", len(tail) - 5)[1] == tail[:-5]).all()
    assert (read_split(tmp_path / "out", "train", 7)[1] == all_tokens[:7]).all()


def test_preparation_resumes_after_the_last_complete_shard(tmp_path):
    inputs = []
    for i in range(6):
        (tmp_path / f"{i}.txt").write_text(f"text {i} " * 40)
        inputs.append(str(tmp_path / f"{i}.txt"))
    straight = prepare(inputs, tmp_path / "straight", tokenizer="byte", shard_tokens=500)
    assert len(straight["shards"]) == 3  # two documents per shard
    # What a run killed while writing the second shard leaves: one shard, meta.json saying so.
    resumed_dir = copy_data(tmp_path / "straight", tmp_path / "resumed")
    for name in ("shard_000001.npy", "shard_000002.npy"):
        (resumed_dir / name).unlink()
    killed = {**straight, "shards": straight["shards"][:1], "documents": 2, "complete": False}
    del killed["splits"], killed["val_fraction"]
    shards.write_meta(resumed_dir, killed)
    with pytest.raises(shards.DataError, match="preparation did not finish"):
        shards.read_meta(resumed_dir)
    resumed = prepare(inputs, resumed_dir, tokenizer="byte", shard_tokens=500)
    assert resumed == straight
    assert (tokens_of(resumed_dir)[0] == tokens_of(tmp_path / "straight")[0]).all()


def test_a_full_disk_is_one_line_and_the_rerun_resumes(tmp_path, monkeypatch):
    """The second shard cannot be written (a full disk): it was a traceback, exit 1, and a half-written
    shard_000001.npy.tmp left behind."""
    inputs = []
    for i in range(6):
        (tmp_path / f"{i}.txt").write_text(f"text {i} " * 40)
        inputs.append(str(tmp_path / f"{i}.txt"))
    straight = prepare(inputs, tmp_path / "straight", tokenizer="byte", shard_tokens=500)

    class FullDisk:  # the file that fills the disk: what is written before the error stays, as on a real disk
        def __init__(self, file):
            self.file = file

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

        def __getattr__(self, name):
            return getattr(self.file, name)

        def writelines(self, lines):
            self.file.write(next(iter(lines)))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    real_open = open
    monkeypatch.setattr(shards, "open", lambda path, mode: (FullDisk if "000001" in str(path) else lambda f: f)(
        real_open(path, mode)), raising=False)
    out = tmp_path / "out"
    with pytest.raises(shards.DataError, match=f"cannot write {out / 'shard_000001.npy'}: No space left on device; "
                       "make room, then rerun the same prepare command: it resumes after its last complete shard"):
        prepare(inputs, out, tokenizer="byte", shard_tokens=500)
    assert sorted(path.name for path in out.iterdir()) == ["meta.json", "shard_000000.npy"]  # no .tmp left
    monkeypatch.undo()  # room again
    assert prepare(inputs, out, tokenizer="byte", shard_tokens=500) == straight
    assert (tokens_of(out)[0] == tokens_of(tmp_path / "straight")[0]).all()


@pytest.fixture(scope="module")
def shakespeare_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("shakespeare")
    prepare([SHAKESPEARE], path, tokenizer="byte", val_fraction=0.1)
    return path


def test_train_iterator_is_deterministic_resumable_and_split_across_processes(shakespeare_dir):
    first = train_iterator(shakespeare_dir, 32, 4, seed=3)
    batches = [next(first) for _ in range(5)]
    assert batches[0].shape == (4, 33) and batches[0].dtype == np.int32
    again = train_iterator(shakespeare_dir, 32, 4, seed=3)
    [next(again) for _ in range(2)]
    state = again.get_state()
    resumed = train_iterator(shakespeare_dir, 32, 4, seed=3)
    resumed.set_state(state)
    assert all((next(resumed) == b).all() for b in batches[2:])
    other_seed = next(train_iterator(shakespeare_dir, 32, 4, seed=4))
    assert not (other_seed == batches[0]).all()
    halves = [next(train_iterator(shakespeare_dir, 32, 2, seed=3, process_index=p, process_count=2)) for p in (0, 1)]
    assert {tuple(r) for h in halves for r in h} == {tuple(r) for r in batches[0]}  # two halves of one batch


def test_each_epoch_reads_every_window_once_in_an_order_no_neighbouring_seed_reads(shakespeare_dir):
    """grain shuffles epoch e with seed + e: seed 1's first epoch was seed 0's second, its second seed 0's third."""
    n = len(WindowSource(shakespeare_dir, "train", 1024))

    def epochs(seed, count):
        windows = train_iterator(shakespeare_dir, 1024, 1, seed)
        stream = [next(windows)[0].tobytes() for _ in range(count * n)]
        return [stream[e * n : (e + 1) * n] for e in range(count)]

    (seed_0, seed_0_again), (seed_1,) = epochs(0, 2), epochs(1, 1)
    assert sorted(seed_0) == sorted(seed_0_again) == sorted(seed_1) and len(set(seed_0)) == n
    assert len({tuple(seed_0), tuple(seed_0_again), tuple(seed_1)}) == 3


def test_eval_batches_cover_every_window_once_with_padding(shakespeare_dir):
    source = WindowSource(shakespeare_dir, "val", 64)
    rows = np.concatenate(list(eval_batches(source, 12)))
    assert len(rows) % 12 == 0 and (rows[len(source) :] == -1).all()  # padding: no target
    assert (rows[: len(source)] >= 0).all() and len(source) == (111540 - 1) // 64
    np.testing.assert_array_equal(rows[5], source[5])
    assert [(b[:, 0] >= 0).sum() for b in eval_batches(source, 12, max_windows=30)] == [12, 12, 6]


@pytest.fixture(scope="module")
def documents_dirs(tmp_path_factory):
    """Twelve documents with 2- and 4-byte characters, prepared as bytes (the val split starting inside a
    4-byte character) and as GPT-2 BPE, in shards of ~200 tokens."""
    path = tmp_path_factory.mktemp("documents")
    texts = [f"doc {i}: naïve café 😀 " * (i + 3) for i in range(12)]
    for i, text in enumerate(texts):
        (path / f"{i:02d}.txt").write_text(text)
    inputs = [str(path / f"{i:02d}.txt") for i in range(12)]
    total = sum(len(t.encode()) for t in texts) + 11
    assert texts[9].endswith("😀 ")
    cut = total - len(texts[11].encode()) - 1 - len(texts[10].encode()) - 1 - 4  # 1 byte into texts[9]'s last 😀
    prepare(inputs, path / "byte", tokenizer="byte", val_fraction=(total - cut - 0.5) / total, shard_tokens=200)
    prepare(inputs, path / "gpt2", tokenizer="gpt2", val_fraction=0.3, shard_tokens=200)
    return texts, path / "byte", path / "gpt2"


def test_val_text_is_documents_cut_at_end_of_text_with_split_characters_left_out(documents_dirs):
    texts, byte_dir, bpe_dir = documents_dirs
    documents = read_documents(byte_dir)  # the split starts 1 byte into the last 😀 of texts[9]
    assert documents == [" ", texts[10], texts[11]]
    assert len(shards.read_meta(byte_dir)["splits"]["val"]) > 1  # across shards
    bpe_documents = read_documents(bpe_dir)
    first = 12 - len(bpe_documents)
    assert bpe_documents[1:] == texts[first + 1 :] and texts[first].endswith(bpe_documents[0])
    head = "doc 11: naïve café "  # then a 😀, cut after its first byte:
    max_tokens = 4 + 1 + len(texts[10].encode()) + 1 + len(head.encode()) + 1  # 4: the split's "\x9f\x98\x80 "
    assert read_documents(byte_dir, max_tokens) == [" ", texts[10], head]  # the halves of 😀 left out


@pytest.mark.parametrize("name", ["byte", "gpt2"])
def test_text_windows_score_every_byte_once_in_order(documents_dirs, name):
    texts, byte_dir, _ = documents_dirs
    documents = read_documents(byte_dir)
    tokenizer = get_tokenizer(name)
    windows = TextWindows(documents, tokenizer, 16)
    rows = np.stack([windows[i] for i in range(len(windows))])
    assert rows[0, 0] == tokenizer.eot_token and (rows[1:, 0] == rows[:-1, -1]).all()  # windows share one token
    assert (rows[:-1] >= 0).all() and (rows[-1, 1:] == -1).any()  # only the last one is padded
    targets = rows[:, 1:].ravel()
    targets = targets[targets >= 0]
    pieces = np.split(targets, np.flatnonzero(targets == tokenizer.eot_token))
    assert [tokenizer.decode_bytes(p[i > 0 :].tolist()).decode() for i, p in enumerate(pieces)] == documents
    assert tokenizer.token_bytes()[targets].sum() == sum(len(d.encode()) for d in documents)


def test_text_windows_of_the_data_tokenizer_are_its_tokens(shakespeare_dir):
    stream = TextWindows(read_documents(shakespeare_dir), get_tokenizer("byte"), 64).stream
    _, opened = shards.open_split(shakespeare_dir, "val")
    np.testing.assert_array_equal(stream, [256, *opened[0][0][opened[0][1].start :]])


def copy_data(src, dst):
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


@pytest.mark.parametrize("damage, message", [
    ("truncate", "corrupt shard"),
    ("empty", "corrupt shard"),
    ("delete", "shard listed in meta.json is missing"),
    ("garbage", "outside the vocabulary"),
    ("no_meta", "no meta.json"),
    ("a_directory", "shard_000000.npy: cannot read the shard (Is a directory)"),  # was "corrupt shard"
])
def test_damaged_data_is_a_clear_error(shakespeare_dir, tmp_path, damage, message):
    data_dir = copy_data(shakespeare_dir, tmp_path / "data")
    shard = data_dir / "shard_000000.npy"
    if damage == "truncate":
        shard.write_bytes(shard.read_bytes()[:5000])
    elif damage == "empty":
        shard.write_bytes(b"")
    elif damage == "delete":
        shard.unlink()
    elif damage == "garbage":
        tokens = np.load(shard)
        tokens[:2000] = 60000
        np.save(shard, tokens)
    elif damage == "no_meta":
        (data_dir / "meta.json").unlink()
    elif damage == "a_directory":
        shard.unlink()
        shard.mkdir()
    with pytest.raises(shards.DataError, match=re.escape(message)):
        source = WindowSource(data_dir, "train", 64)
        source[0]


def rewrite_meta(data_dir, edit):
    meta = json.loads((data_dir / "meta.json").read_text())
    edit(meta)
    (data_dir / "meta.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("edit, message", [
    (lambda meta: meta["shards"][0].update(file="other.npy"),
     "splits.train[0] reads 'shard_000000.npy', which is not in shards; prepare the data again"),
    (lambda meta: meta["splits"]["train"][0].update(start=-50),
     "splits.train[0] is tokens [-50, 1003854) of shard_000000.npy, which holds 1115394: need 0 <= start <= stop"),
    (lambda meta: meta["splits"]["val"][0].update(stop=99_999_999), "splits.val[0] is tokens [1003854, 99999999)"),
    (lambda meta: meta["splits"]["val"][0].update(start=1_115_000, stop=1_110_000),
     "splits.val[0] is tokens [1115000, 1110000)"),
    (lambda meta: meta["splits"]["val"][0].update(stop=2.5), "splits.val[0] is tokens [1003854, 2.5)"),
    (lambda meta: meta.update(eot_token=99_999), "vocab_size=257, eot_token=99999: need ints with 0 <= eot_token <"),
    (lambda meta: meta.update(eot_token=-1), "vocab_size=257, eot_token=-1: need ints"),
    (lambda meta: meta.update(vocab_size="257"), "vocab_size='257', eot_token=256: need ints"),
    (lambda meta: meta["splits"]["val"][0].pop("stop"), "shards or splits are not as prepare writes them"),
    (lambda meta: meta.update(shards=[{"file": "shard_000000.npy"}]), "shards or splits are not as prepare writes them"),
], ids=["unlisted_shard", "negative_start", "stop_past_the_shard", "start_after_stop", "float_stop", "eot_too_big",
        "eot_negative", "vocab_a_string", "segment_without_stop", "shard_without_size"])
def test_a_meta_json_that_contradicts_itself_is_a_clear_error(shakespeare_dir, tmp_path, edit, message):
    data_dir = copy_data(shakespeare_dir, tmp_path / "data")
    rewrite_meta(data_dir, edit)
    with pytest.raises(shards.DataError, match=re.escape(f"{data_dir / 'meta.json'}: {message}")):
        shards.read_meta(data_dir)


def test_val_text_refuses_ids_outside_the_vocabulary_where_it_reads(shakespeare_dir, tmp_path):
    data_dir = copy_data(shakespeare_dir, tmp_path / "data")
    shard = data_dir / "shard_000000.npy"
    tokens = np.load(shard)
    tokens[1_003_854 + 100 :: 7] = 60000  # from the 100th val token on
    np.save(shard, tokens)
    with pytest.raises(shards.DataError, match=re.escape(
            f"{shard}: corrupt shard (token 60000 at offset 1003954 is outside the vocabulary of 257)")):
        read_documents(data_dir, 5000)
    assert read_documents(data_dir, 100) == read_documents(shakespeare_dir, 100)  # only what it reads is checked


def test_an_empty_val_split_is_a_clear_error(tmp_path):
    (tmp_path / "t.txt").write_text("To be, or not to be. " * 20)
    prepare([str(tmp_path / "t.txt")], tmp_path / "out", tokenizer="byte", val_fraction=0.0)
    with pytest.raises(shards.DataError, match=re.escape(f"{tmp_path / 'out'}: the val split has no tokens; prepare "
                                                         "the data into a new --out with a --val-fraction that gives it some")):
        read_documents(tmp_path / "out")


def run_prepare(*args):
    return subprocess.run([sys.executable, "-m", "gpt2_jax.prepare", *args], capture_output=True, text=True)


def test_cli_prepares_and_reports_bad_input(tmp_path):
    result = run_prepare("--input", SHAKESPEARE, "--out", str(tmp_path / "ok"), "--tokenizer", "byte", "--workers", "2")
    assert result.returncode == 0, result.stderr
    assert "1,003,854 train + 111,540 val byte tokens" in result.stdout
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"text": broken\n')
    assert_one_line_error(run_prepare("--input", str(tmp_path / "bad.jsonl"), "--out", str(tmp_path / "x")),
                          "bad.jsonl:2: not valid JSON")
    (tmp_path / "nofield.jsonl").write_text('{"body": "x"}\n')
    assert_one_line_error(run_prepare("--input", str(tmp_path / "nofield.jsonl"), "--out", str(tmp_path / "y")),
                          "nofield.jsonl:1: no string field 'text'")
    assert_one_line_error(run_prepare("--input", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "z")),
                          "no such file or directory")
    assert_one_line_error(run_prepare("--input", SHAKESPEARE, "--out", str(tmp_path / "ok"), "--tokenizer", "gpt2"),
                          "holds another preparation")
    before = {path.name: path.read_bytes() for path in (tmp_path / "ok").iterdir()}
    assert_one_line_error(run_prepare("--input", SHAKESPEARE, "--out", str(tmp_path / "ok"), "--tokenizer", "byte",
                                      "--val-fraction", "0.2"), "was split with val_fraction=0.1; splitting it again")
    relative = os.path.relpath(SHAKESPEARE, tmp_path)  # the same input named from elsewhere: the same preparation
    again = subprocess.run([sys.executable, "-m", "gpt2_jax.prepare", "--input", relative, "--out", "ok", "--tokenizer",
                            "byte"], capture_output=True, text=True, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert {path.name: path.read_bytes() for path in (tmp_path / "ok").iterdir()} == before


def preparer_at_work(tmp_path):
    """`prepare --workers 2` in its own process group, once its workers have tokenized a document of the 600 (seconds
    of work, stopped early in it): (the process, its stderr so far)."""
    (tmp_path / "corpus").mkdir()
    text = Path(SHAKESPEARE).read_text()[:100_000]
    for i in range(600):
        (tmp_path / "corpus" / f"{i:03d}.txt").write_text(text)
    preparer = subprocess.Popen([sys.executable, "-m", "gpt2_jax.prepare", "--input", str(tmp_path / "corpus"), "--out",
                                 str(tmp_path / "out"), "--tokenizer", "gpt2", "--workers", "2"],
                                stderr=subprocess.PIPE, start_new_session=True)
    seen = b""
    while not re.search(rb"\| *[1-9]\d*/600 ", seen):
        chunk = os.read(preparer.stderr.fileno(), 4096)
        assert chunk, seen.decode()
        seen += chunk
    return preparer, seen


@pytest.mark.parametrize("kill, signum, said", [(os.kill, signal.SIGTERM, "stopped by SIGTERM"),  # `kill PID`
                                                (os.killpg, signal.SIGTERM, "stopped by SIGTERM"),  # timeout, Slurm
                                                (os.killpg, signal.SIGINT, "interrupted"),  # Ctrl-C
                                                (os.killpg, signal.SIGHUP, "stopped by SIGHUP")])  # a terminal closed
def test_a_stop_signal_ends_the_workers_quietly_in_one_line(kill, signum, said, tmp_path):
    """A stop signal while the workers tokenize, to the preparer alone or to its whole process group: the workers
    are ended with it, print nothing, and the preparer says why in one line, exiting 128 + the signal."""
    preparer, seen = preparer_at_work(tmp_path)
    kill(preparer.pid, signum)
    stderr = (seen + preparer.communicate(timeout=60)[1]).decode().replace("\r", "\n")
    assert [line for line in stderr.splitlines() if line.strip() and not line.startswith("tokenize")] == [said], stderr
    assert preparer.returncode == 128 + signum
    with pytest.raises(ProcessLookupError):  # no worker left behind in its process group
        os.killpg(preparer.pid, 0)


def test_the_workers_die_with_a_preparer_killed_alone(tmp_path):
    """SIGKILL to the preparer alone (`kill -9 PID`, the OOM killer): its workers, finding no reader for their
    results, printed BrokenPipeError tracebacks before they exited; now they die with it, without a word."""
    preparer, seen = preparer_at_work(tmp_path)
    preparer.kill()
    stderr = (seen + preparer.communicate(timeout=60)[1]).decode()  # until the workers close the pipe: gone
    assert preparer.returncode == -signal.SIGKILL and "Traceback" not in stderr, stderr


# SIGTERM arrives as the pool starts its second worker, the first one running.
SIGTERM_AS_THE_POOL_STARTS = """
import os, signal, sys
from gpt2_jax import prepare, shard_writer
process, made = shard_writer._Pool.Process, []
def second_with_sigterm(ctx, *args, **kwargs):
    made.append(process(ctx, *args, **kwargs))
    if len(made) == 2:
        os.kill(os.getpid(), signal.SIGTERM)
    return made[-1]
shard_writer._Pool.Process = staticmethod(second_with_sigterm)
sys.argv[0] = "prepare"
prepare.main()
"""


def test_a_stop_signal_as_the_workers_start_ends_them_too(tmp_path):
    """Raised inside Pool() it escaped the pool's clean-up: the workers (which ignore SIGTERM) were left running,
    and the preparer hung at exit waiting for them."""
    preparer = subprocess.Popen([sys.executable, "-c", SIGTERM_AS_THE_POOL_STARTS, "--input", SHAKESPEARE, "--out",
                                 str(tmp_path / "out"), "--tokenizer", "byte", "--workers", "2"], stderr=subprocess.PIPE,
                                text=True, start_new_session=True)
    try:
        stderr = preparer.communicate(timeout=60)[1]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(preparer.pid, signal.SIGKILL)  # what a hang left behind
    assert preparer.returncode == 128 + signal.SIGTERM and stderr.splitlines()[-1] == "stopped by SIGTERM", stderr


# terminate() while both workers are busy and the pool's task handler is still pickling a task larger than a pipe.
TERMINATE_AS_A_LARGE_TASK_IS_PICKLED = """
import threading, time
from gpt2_jax import shard_writer
pickling = threading.Event()
class Document:
    def __init__(self, slow):
        self.slow = slow
    def __reduce__(self):  # in the task handler's thread
        if self.slow:
            pickling.set()
            time.sleep(1)
        return bytes, (b"x" * 1_000_000,)
def busy(document):
    time.sleep(60)
pool = shard_writer._Pool(2)
pool.imap(busy, [Document(slow=i == 2) for i in range(4)])
pickling.wait()
time.sleep(0.2)  # the workers have read their tasks: the queue is empty
pool.terminate()
print("ended")
"""


def test_the_pool_ends_while_it_is_handing_out_a_task():
    """CPython's terminate() stops draining the workers' queue when it is empty, and a task the pool was still
    pickling (Ctrl-C mid-preparation, a few documents of 100 KB) was then written into a pipe nobody read: the
    preparer hung, after `interrupted`, until killed."""
    ended = subprocess.Popen([sys.executable, "-c", TERMINATE_AS_A_LARGE_TASK_IS_PICKLED], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = ended.communicate(timeout=30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(ended.pid, signal.SIGKILL)  # what a hang left behind: the preparer and its workers
    assert ended.returncode == 0 and stdout == "ended\n", stderr


def test_a_train_split_too_small_for_a_window_is_warned_about(tmp_path):
    (tmp_path / "t.txt").write_text("To be, or not to be: that is the question. " * 50)
    result = run_prepare("--input", str(tmp_path / "t.txt"), "--out", str(tmp_path / "out"), "--tokenizer", "byte",
                         "--val-fraction", "0.999")
    assert result.returncode == 0, result.stderr
    assert "2 train + 2,148 val byte tokens" in result.stdout
    assert result.stderr.strip().splitlines()[-1] == (  # after the progress bar
        "warning: the train split holds only 2 tokens, and a run needs block_size + 1 (GPT-2's: 1,025) for one "
        "window; a smaller --val-fraction keeps more")


def test_bad_input_or_output_is_one_line_and_leaves_no_folder(tmp_path):
    """Each with worker processes: the pool is closed on the error (no `Pool.__del__` traceback at exit)."""
    (tmp_path / "binary.txt").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "a_file").write_text("not a folder")
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "others").mkdir()
    (tmp_path / "others" / "notes.txt").write_text("someone's")
    cases = [(["--input", str(tmp_path / "empty.txt")], tmp_path / "out0", "no text found in"),
             (["--input", SHAKESPEARE], "", "--out is empty"),
             (["--input", SHAKESPEARE], tmp_path / "others", "holds other files and no prepared data"),
             (["--input", str(tmp_path / "others")], tmp_path / "others" / "prep", "is inside the input"),
             (["--input", str(tmp_path / "missing.txt")], tmp_path / "out1", "missing.txt: no such file or directory"),
             (["--input", str(tmp_path / "binary.txt")], tmp_path / "out2", "binary.txt: not UTF-8 text"),
             (["--input", SHAKESPEARE], tmp_path / "a_file", "is a file; give a directory"),
             (["--input", SHAKESPEARE, "--shard-tokens", "0"], tmp_path / "out3", "shard_tokens=0 must be at least 1")]
    for args, out, message in cases:
        assert_one_line_error(run_prepare(*args, "--out", str(out), "--workers", "2", "--tokenizer", "byte"), message)
    result = run_prepare("--input", SHAKESPEARE, "--out", str(tmp_path / "out4"), "--workers", "0")
    assert_one_line_error(result, "workers=0 must be at least 1")  # was "shard_tokens=100000000 and workers=0 ..."
    assert "shard_tokens" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "binary.txt", "empty.txt", "others"]
    assert [p.name for p in (tmp_path / "others").iterdir()] == ["notes.txt"]


def test_an_unreadable_input_is_one_line(tmp_path):
    """was: a PermissionError traceback from the tokenizing workers"""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("readable")
    for name in ("b.txt", "c.jsonl"):  # a .jsonl's lines are counted first, for the progress bar
        (tmp_path / "in" / name).write_text('{"text": "not for us"}\n')
        (tmp_path / "in" / name).chmod(0)
        result = subprocess.run([*unprivileged(), sys.executable, "-m", "gpt2_jax.prepare", "--input",
                                 str(tmp_path / "in" / name), "--out", str(tmp_path / "out"), "--tokenizer", "byte"],
                                capture_output=True, text=True)
        assert_one_line_error(result, f"{tmp_path / 'in' / name}: cannot read it (Permission denied)")
        assert not (tmp_path / "out").exists()


def test_a_preparation_cut_before_its_first_meta_json_runs_again(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "shard_000000.npy").write_bytes(b"cut")  # killed between the first shard and the first meta.json
    (out / "meta.json.tmp").write_bytes(b"{")
    prepare([SHAKESPEARE], out, tokenizer="byte")
    assert shards.read_meta(out)["complete"] and len(np.load(out / "shard_000000.npy")) == 1_115_394


def test_a_parquet_file_that_does_not_fit_is_one_line(tmp_path):
    import pyarrow
    import pyarrow.parquet as parquet

    parquet.write_table(pyarrow.table({"content": ["alpha"]}), tmp_path / "column.parquet")
    parquet.write_table(pyarrow.table({"text": ["alpha", None]}), tmp_path / "null.parquet")
    parquet.write_table(pyarrow.table({"text": [1, 2]}), tmp_path / "ints.parquet")
    (tmp_path / "empty.parquet").write_bytes(b"")
    for name, message in (("column", "no column 'text' (it has content); see --text-field"),
                          ("null", "null.parquet: row 2: 'text' is NoneType, not a string"),
                          ("ints", "ints.parquet: row 1: 'text' is int, not a string"),
                          ("empty", "empty.parquet: not a readable .parquet file")):
        result = run_prepare("--input", str(tmp_path / f"{name}.parquet"), "--out", str(tmp_path / "out"),
                             "--workers", "2", "--tokenizer", "byte")
        assert_one_line_error(result, message)
        assert not (tmp_path / "out").exists()


def test_an_hf_dataset_that_cannot_be_read_is_a_data_error(monkeypatch):
    """No network (the hub unreachable), or no such text field: DataError, which the CLI prints as one line."""
    import types

    from gpt2_jax.corpus import iter_documents

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'roneneldan/TinyStories' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=offline))
    with pytest.raises(shards.DataError, match="hf:roneneldan/TinyStories: cannot be read .ConnectionError: Couldn't"):
        list(iter_documents(["hf:roneneldan/TinyStories"]))
    rows = types.SimpleNamespace(load_dataset=lambda *args, **kwargs: iter([{"story": "x"}]))
    monkeypatch.setitem(sys.modules, "datasets", rows)
    with pytest.raises(shards.DataError, match="row 1: no string field 'text' .it has story.; see --text-field"):
        list(iter_documents(["hf:roneneldan/TinyStories"]))

    def lost_midway():
        yield {"text": "once"}
        raise ConnectionError("Connection reset by peer")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=lambda *a, **k: lost_midway()))
    documents = iter_documents(["hf:roneneldan/TinyStories"])
    assert next(documents) == "once"
    with pytest.raises(shards.DataError, match="cannot be read .ConnectionError: Connection reset by peer"):
        next(documents)
    later_null = types.SimpleNamespace(load_dataset=lambda *a, **k: iter([{"text": "a"}, {"text": None}]))
    monkeypatch.setitem(sys.modules, "datasets", later_null)
    with pytest.raises(shards.DataError, match="row 2: no string field 'text'"):
        list(iter_documents(["hf:roneneldan/TinyStories"]))


def test_a_read_only_out_is_one_line(tmp_path):
    writable_again = read_only(tmp_path)
    try:
        result = run_prepare("--input", SHAKESPEARE, "--out", str(tmp_path), "--tokenizer", "byte")
    finally:
        writable_again()
    assert_one_line_error(result, "cannot write there")
    assert not any(tmp_path.iterdir())


def test_a_shard_write_stopped_midway_leaves_no_part_behind(tmp_path):
    """A stop (Ctrl-C, SIGTERM: a KeyboardInterrupt) during a shard's write left its part as `shard_*.npy.tmp`
    (only a failed write's was removed): the output holds whole shards or nothing of one."""
    def stopped_midway(file):
        file.write(b"\x93NUMPY part of a shard")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        shards.atomic_write(tmp_path / "shard_000001.npy", stopped_midway)
    assert list(tmp_path.iterdir()) == []
