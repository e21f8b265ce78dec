"""Data: preparation from every input kind, the split, resuming, the grain pipeline, damaged shards."""

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import SHAKESPEARE, assert_one_line_error, read_only

from gpt2_jax import shards
from gpt2_jax.data import WindowSource, eval_batches, train_iterator
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


def test_parquet_input(tmp_path):
    pyarrow = pytest.importorskip("pyarrow")
    import pyarrow.parquet as parquet

    parquet.write_table(pyarrow.table({"content": ["alpha", "beta"]}), tmp_path / "t.parquet")
    prepare([str(tmp_path / "t.parquet")], tmp_path / "out", tokenizer="byte", val_fraction=0.0, text_field="content")
    assert tokens_of(tmp_path / "out")[0].tolist() == list(b"alpha") + [256] + list(b"beta")


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
    rows = {tuple(r) for h in halves for r in h}
    assert len(rows) == 4 and rows.isdisjoint({tuple(r) for r in halves[0]} & {tuple(r) for r in halves[1]})


def test_eval_batches_cover_every_window_once_with_padding(shakespeare_dir):
    source = WindowSource(shakespeare_dir, "val", 64)
    batches = list(eval_batches(source, 12))
    weights = np.concatenate([w for _, w in batches])
    assert weights.sum() == len(source) == (111540 - 1) // 64
    windows = np.concatenate([b for b, _ in batches])[: len(source)]
    np.testing.assert_array_equal(windows[5], source[5])
    assert [w.sum() for _, w in eval_batches(source, 12, max_windows=30)] == [12, 12, 6]


def copy_data(src, dst):
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


@pytest.mark.parametrize("damage, message", [
    ("truncate", "corrupt shard"),
    ("delete", "shard listed in meta.json is missing"),
    ("garbage", "outside the vocabulary"),
    ("no_meta", "no meta.json"),
])
def test_damaged_data_is_a_clear_error(shakespeare_dir, tmp_path, damage, message):
    data_dir = copy_data(shakespeare_dir, tmp_path / "data")
    shard = data_dir / "shard_000000.npy"
    if damage == "truncate":
        shard.write_bytes(shard.read_bytes()[:5000])
    elif damage == "delete":
        shard.unlink()
    elif damage == "garbage":
        tokens = np.load(shard)
        tokens[:2000] = 60000
        np.save(shard, tokens)
    elif damage == "no_meta":
        (data_dir / "meta.json").unlink()
    with pytest.raises(shards.DataError, match=message):
        source = WindowSource(data_dir, "train", 64)
        source[0]


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


def test_bad_input_or_output_is_one_line_and_leaves_no_folder(tmp_path):
    """Each with worker processes: the pool is closed on the error (no `Pool.__del__` traceback at exit)."""
    (tmp_path / "binary.txt").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "a_file").write_text("not a folder")
    cases = [(["--input", str(tmp_path / "missing.txt")], tmp_path / "out1", "missing.txt: no such file or directory"),
             (["--input", str(tmp_path / "binary.txt")], tmp_path / "out2", "binary.txt: not UTF-8 text"),
             (["--input", SHAKESPEARE], tmp_path / "a_file", "is a file; give a directory"),
             (["--input", SHAKESPEARE, "--shard-tokens", "0"], tmp_path / "out3", "shard_tokens=0 and workers=2")]
    for args, out, message in cases:
        assert_one_line_error(run_prepare(*args, "--out", str(out), "--workers", "2", "--tokenizer", "byte"), message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "binary.txt"]


def test_a_read_only_out_is_one_line(tmp_path):
    writable_again = read_only(tmp_path)
    try:
        result = run_prepare("--input", SHAKESPEARE, "--out", str(tmp_path), "--tokenizer", "byte")
    finally:
        writable_again()
    assert_one_line_error(result, "cannot write there")
    assert not any(tmp_path.iterdir())
