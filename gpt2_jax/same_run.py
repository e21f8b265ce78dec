"""The processes of a multi-process run start alike: the same settings and the same data.

Each host parses its own command line and reads its own data directory. A host given other settings (a
typo in one host's command) would compile other programs and wait forever in collectives that do not
match, or train at another learning rate; a host with other data would train, silently, on other
windows; a host that restored another checkpoint would train other params. So before the first step, the
processes compare their settings (before any is acted on), their data's identity and the step they start
from. Each process says its own value, so the logs of two hosts show what differed.
"""

from __future__ import annotations

import hashlib
import json

import jax
import numpy as np
from jax.experimental import multihost_utils

from gpt2_jax.config import ConfigError
from gpt2_jax.workdir import data_fingerprint


def check_same_settings(config) -> None:
    """ConfigError on every process if any was given other settings than process 0; nothing when alone.
    data_dir may differ from host to host (where each mounts the data): check_same_data compares the data."""
    if jax.process_count() == 1:
        return
    settings = {key: value for key, value in config.to_dict().items() if key != "data_dir"}
    names = sorted(settings)  # other keys would gather arrays of other shapes: compare the key set first
    keys = "the settings' keys (another gpt2_jax?)"
    compare({keys: "\n".join(names)}, {keys: f"{len(names)} keys"})
    compare({key: json.dumps(settings[key], default=str) for key in names},
            {key: f"{key}={settings[key]}" for key in names})


def check_same_data(config, meta: dict) -> None:
    """ConfigError on every process if any reads other prepared data (tokenizer, shards or splits)."""
    if jax.process_count() > 1:
        data = "its data (tokenizer, shards or splits)"
        compare({data: data_fingerprint(meta)}, {data: f"data_dir={config.data_dir}"})


def check_same_start(step: int) -> None:
    """ConfigError on every process unless all start from the same checkpoint step (0: none). Each restores the
    newest one it can read: they differ if the processes do not share one checkpoints/ directory."""
    if jax.process_count() > 1:
        start = "the step it starts from (do the processes share one checkpoints/ directory?)"
        compare({start: str(step)}, {start: f"step {step}"})


def process_0s(value: bool) -> bool:
    """Process 0's `value` on every process: what only process 0 reads (the run's metrics.jsonl)."""
    return value if jax.process_count() == 1 else bool(multihost_utils.broadcast_one_to_all(np.asarray(value)))


def compare(texts: dict[str, str], here: dict[str, str]) -> None:
    """Gather a digest of each text from every process; ConfigError naming the texts in which the first process
    that differs from process 0 differs, with what `here` says of them on this process."""
    names = list(texts)
    try:
        every = multihost_utils.process_allgather(np.asarray([digest(texts[name]) for name in names], np.int32))
    except (ValueError, RuntimeError) as error:  # a process that failed alone (its log says why) went away
        raise ConfigError(f"another process of this run stopped before comparing {', '.join(names)} with this one "
                          f"(its log says why): {str(error).splitlines()[0][:200]}") from None
    differs = every != every[0]  # [processes, names]
    if differs.any():
        process = int(np.flatnonzero(differs.any(axis=1))[0])
        named = [name for name, differ in zip(names, differs[process]) if differ]
        raise ConfigError(f"process {process} of this run differs from process 0 in {', '.join(named)} (here "
                          f"{', '.join(here[name] for name in named)}): every process takes the same command line "
                          "and reads the same prepared data")


def digest(text: str) -> int:
    """31 bits of the text's SHA-256 (an int32 on every platform, with or without jax_enable_x64)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little") >> 1
