"""Documents of a corpus, in a fixed order, from files, folders, .jsonl, .parquet or the HF hub.

Text files are one document each; .jsonl and .parquet hold one document per record, in a
text field. `hf:NAME[:CONFIG]` streams a Hugging Face dataset's train split (needs a network
and `pip install datasets`), e.g. `hf:HuggingFaceFW/fineweb-edu:sample-10BT`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from gpt2_jax.shards import DataError


def check_inputs(inputs: list[str], out_dir: Path | None = None) -> None:
    """DataError for an input that is not there (hf: inputs are checked when they are read), or that holds
    `out_dir` (the output of a preparation, which would read its own shards the next time)."""
    for source in inputs:
        if not source.startswith("hf:") and not Path(source).exists():
            raise DataError(f"{source}: no such file or directory")
        if out_dir and not source.startswith("hf:") and Path(source).resolve() in [
                out_dir.resolve(), *out_dir.resolve().parents]:
            raise DataError(f"--out {out_dir} is inside the input {source}; choose a directory outside it")


def absolute_inputs(inputs: list[str]) -> list[str]:
    """Local inputs as absolute paths (hf: names as they are): what a preparation records and compares."""
    return [source if source.startswith("hf:") else str(Path(source).resolve()) for source in inputs]


def iter_documents(inputs: list[str], text_field: str = "text") -> Iterator[str]:
    """Every document of every input, in a fixed order."""
    check_inputs(inputs)
    for source in inputs:
        if source.startswith("hf:"):
            yield from _hf_documents(source.removeprefix("hf:"), text_field)
            continue
        for file in _files(Path(source)):
            yield from _file_documents(file, text_field)


def count_documents(inputs: list[str]) -> int | None:
    """How many documents `iter_documents` yields, where that is cheap to know (a progress bar's total):
    files count one, .jsonl its non-empty lines, .parquet its rows; None for hf: streams or a missing input."""
    count = 0
    for source in inputs:
        path = Path(source)
        if source.startswith("hf:") or not path.exists():
            return None
        for file in _files(path):
            if file.suffix == ".parquet":
                try:
                    import pyarrow.parquet as parquet
                    count += parquet.ParquetFile(file).metadata.num_rows
                except Exception:  # not readable here: iter_documents says why
                    return None
            elif file.suffix == ".jsonl":
                try:
                    with open(file, "rb") as lines:
                        count += sum(1 for line in lines if line.strip())
                except OSError:  # not readable here: iter_documents says why
                    return None
            else:
                count += 1
    return count


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    return [path]


def _file_documents(path: Path, text_field: str) -> Iterator[str]:
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as parquet
        except ImportError:
            raise DataError(f"{path}: reading .parquet needs pyarrow (pip install pyarrow)") from None
        yield from _parquet_documents(parquet, path, text_field)
        return
    try:
        if path.suffix != ".jsonl":
            yield path.read_text(encoding="utf-8")
            return
        with open(path, encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                if line.strip():
                    yield _json_text(line, text_field, f"{path}:{number}")
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text") from None
    except OSError as error:  # unreadable here (permissions), an I/O error
        raise DataError(f"{path}: cannot read it ({error.strerror or error})") from None


def _parquet_documents(parquet, path: Path, text_field: str) -> Iterator[str]:
    try:
        file = parquet.ParquetFile(path)
        columns = file.schema_arrow.names
    except Exception as error:  # pyarrow raises its own types (ArrowInvalid, ...) for a damaged file
        raise DataError(f"{path}: not a readable .parquet file ({' '.join(str(error).split())[:160]})") from None
    if text_field not in columns:
        raise DataError(f"{path}: no column {text_field!r} (it has {', '.join(columns) or 'none'}); see --text-field")
    row = 0
    for batch in file.iter_batches(batch_size=1024, columns=[text_field]):  # pyarrow's 65,536 rows: GBs of text
        for text in batch.column(0).to_pylist():
            row += 1
            if not isinstance(text, str):
                raise DataError(f"{path}: row {row}: {text_field!r} is {type(text).__name__}, not a string")
            yield text


def _json_text(line: str, text_field: str, where: str) -> str:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise DataError(f"{where}: not valid JSON ({error.msg})") from None
    if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
        raise DataError(f"{where}: no string field {text_field!r}")
    return record[text_field]


def _hf_documents(name: str, text_field: str) -> Iterator[str]:
    try:
        import datasets
    except ImportError:
        raise DataError("hf: inputs need the datasets package (pip install datasets)") from None
    name, _, config = name.partition(":")
    rows, number = None, 0
    while True:
        try:  # no network, no such dataset or config, a connection lost midway: datasets raises many types
            rows = rows or iter(datasets.load_dataset(name, config or None, split="train", streaming=True))
            row = next(rows)
        except StopIteration:
            return
        except Exception as error:
            raise DataError(f"hf:{name}: cannot be read ({type(error).__name__}: "
                            f"{' '.join(str(error).split())[:160]})") from None
        number += 1
        if not isinstance(row.get(text_field) if isinstance(row, dict) else None, str):
            raise DataError(f"hf:{name}: row {number}: no string field {text_field!r} "
                            f"(it has {', '.join(row) if isinstance(row, dict) else 'none'}); see --text-field")
        yield row[text_field]
