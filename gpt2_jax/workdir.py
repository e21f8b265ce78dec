"""A training workdir's settings: a resumed run is the same run (its lock: workdir_lock.py).

config.json holds the model (HF schema), train_config.json the run's settings, its data's
identity and how many processes read it; a start that would change the run is refused.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

from gpt2_jax import outdir
from gpt2_jax.config import GPT2Config
from gpt2_jax.data import ORDER_VERSION
from gpt2_jax.model_dirs import CHECKPOINTS, TRAIN_CONFIG
from gpt2_jax.optim import learning_rates
from gpt2_jax.train_config import FIELDS, fits_setting
from gpt2_jax.workdir_lock import WorkdirError

MODEL_CONFIG = "config.json"
# Settings that change the shapes of the saved state without changing the model's config.json.
SHAPE_SETTINGS = ("vocab_pad_multiple",)
# With the data itself, what fixes which windows each step reads (a restored iterator counts steps).
ORDER_SETTINGS = ("seed", "tokens_per_step")
DATA_FINGERPRINT = "data_fingerprint"  # train_config.json's record of the data's identity (data_fingerprint)
PROCESSES = "processes"  # and of how many processes trained it: each keeps its own place in the data
DATA_ORDER = "data_order"  # and of the order data.py reads windows in (its ORDER_VERSION; none recorded: 1)


def check_settings(workdir: Path, model_config: GPT2Config, config, meta: dict, processes: int,
                   process_0s: Callable[[bool], bool] = bool) -> dict[str, tuple]:
    """Refuse a workdir whose run trained another model, saved its state with other shapes or, with
    checkpoints to resume, read other data or another order of it, or lost the record of them (as process 0 sees
    it: `process_0s`, same_run's, gives its value everywhere); return the other settings that changed since the
    run's last start, {key: (before, now)}."""
    if (workdir / MODEL_CONFIG).exists():
        saved = GPT2Config.from_json(workdir / MODEL_CONFIG).to_dict()
        changed = [f"{key} {saved[key]} -> {value}" for key, value in model_config.to_dict().items()
                   if saved.get(key) != value]
        if changed:
            raise WorkdirError(f"{workdir} holds a run of another model ({', '.join(changed)} in config.json); "
                               "use a new --workdir")
    resuming = any(path.name.isdigit() for path in (workdir / CHECKPOINTS).glob("*"))
    # Process 0 writes it before the first checkpoint: gone, nothing could be checked (the others' may lack it).
    if process_0s(resuming and not (workdir / TRAIN_CONFIG).exists()):
        raise WorkdirError(f"{workdir} holds checkpoints but no {TRAIN_CONFIG} (the run's settings and data order, "
                           "written at its first step): put it back to resume, or start a new --workdir from its "
                           f"weights with --config.init_from={workdir}")
    if not (workdir / TRAIN_CONFIG).exists():
        return {}
    # Each typed as its default, where it has them: a hand-edited '"max_steps": "x"' was a traceback
    saved = read_settings(workdir, {key: type(default) for key, default, _ in FIELDS}, only_where_present=True)
    for key in SHAPE_SETTINGS + (ORDER_SETTINGS if resuming else ()):
        if key in saved and saved[key] != config[key]:
            why = "changes the shapes of its checkpoints" if key in SHAPE_SETTINGS else "changes its data order"
            raise WorkdirError(f"--config.{key}={config[key]} differs from the run in {workdir} ({key}={saved[key]}) "
                               f"and {why}; rerun with --config.{key}={saved[key]}, or use a new --workdir")
    fingerprint = data_fingerprint(meta)
    if resuming and saved.get(DATA_FINGERPRINT, fingerprint) != fingerprint:  # older runs: none to compare
        raise WorkdirError(f"{config.data_dir} is not the data the run in {workdir} was reading (other shards or "
                           "splits): resuming would change its data order; give that data_dir, or use a new --workdir")
    if resuming and saved.get(DATA_ORDER, 1) != ORDER_VERSION:
        raise WorkdirError(f"the run in {workdir} reads its windows in an order this gpt2_jax no longer makes (data "
                           f"order {saved.get(DATA_ORDER, 1)}, now {ORDER_VERSION}): resuming would repeat some and "
                           "skip others; finish it with the gpt2_jax it started with, or start a new --workdir from "
                           f"its weights with --config.init_from={workdir}")
    if resuming and saved.get(PROCESSES, processes) != processes:  # a run from before the record: none to compare
        raise WorkdirError(f"the run in {workdir} was trained by {saved[PROCESSES]} process(es), each with its own "
                           f"place in the data, and resumes only with {saved[PROCESSES]}, not {processes}; or start a "
                           f"new --workdir from its weights with --config.init_from={workdir}")
    as_saved = json.loads(json.dumps(config.to_dict()))  # tuples as lists, as train_config.json holds them
    return {key: (saved[key], value) for key, value in as_saved.items() if key in saved and saved[key] != value}


def describe_changes(config, changed: dict[str, tuple], step: int) -> str:
    """One line for a resume: the settings `changed` since the run's last start ({key: (before, now)}, from
    check_settings) and what they do to the next step's learning rate."""
    was, now = learning_rates(config, {key: before for key, (before, _) in changed.items()}, step)
    return "settings changed since this run's last start: " + ", ".join(
        f"{key} {_shown(before)} -> {_shown(value)}" for key, (before, value) in changed.items()) + (
        f"; the next step's learning rate is {now:.3g}, {'up' if now > was else 'down'} from {was:.3g}"
        if now != was else "")


def _shown(value) -> str:
    return "None (the platform's choice)" if value is None else str(value)  # None: accelerator.model_kernels'


def read_settings(workdir: Path, types: dict[str, type] | None = None, only_where_present: bool = False) -> dict:
    """The run's train_config.json: a JSON object, with each key of `types` in it (`only_where_present`: those of
    them it has), of that type (train_config.fits_setting; a null text is read as '')."""
    try:
        saved = json.loads((workdir / TRAIN_CONFIG).read_text(encoding="utf-8"))
        if not isinstance(saved, dict):
            raise ValueError(f"a JSON {type(saved).__name__}, not the run's settings")
        for key, kind in (types or {}).items():
            if kind is str and key in saved and saved[key] is None:  # runs whose config set None for '' wrote null
                saved[key] = ""
        if missing := [key for key in types or {} if key not in saved and not only_where_present]:
            raise ValueError(f"it lacks {', '.join(missing)}")
        if wrong := [f"{key} {saved[key]!r}" for key, kind in (types or {}).items() if key in saved
                     and not fits_setting(saved[key], kind)]:
            raise ValueError(f"values a run never writes: {', '.join(wrong)}")
    except (OSError, ValueError) as error:  # ValueError: not JSON, not UTF-8, not the settings
        raise WorkdirError(f"{workdir / TRAIN_CONFIG}: unreadable ({error})") from None
    return saved


def data_fingerprint(meta: dict) -> str:
    """The identity of prepared data (its tokenizer, shards and splits), whichever directory holds it."""
    identity = json.dumps({key: meta.get(key) for key in ("tokenizer", "shards", "splits")}, sort_keys=True)
    return hashlib.sha256(identity.encode()).hexdigest()[:16]


def write_settings(workdir: Path, model_config: GPT2Config, config, meta: dict, processes: int) -> None:
    """config.json (the model, HF schema) and train_config.json (this run's settings, its data's identity and
    how many processes read it), each written whole (a kill while writing leaves the one before)."""
    outdir.write_file(workdir / MODEL_CONFIG, model_config.to_json)
    settings = {**config.to_dict(), DATA_FINGERPRINT: data_fingerprint(meta), PROCESSES: processes,
                DATA_ORDER: ORDER_VERSION}
    outdir.write_file(workdir / TRAIN_CONFIG, lambda path: path.write_text(json.dumps(settings, indent=2) + "\n"))
