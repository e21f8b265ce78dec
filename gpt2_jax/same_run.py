"""The processes of a multi-process run start alike: the same settings and the same data.

Each host parses its own command line and reads its own data directory. A host given other settings (a
typo in one host's command) would compile other programs and wait forever in collectives that do not
match, or train at another learning rate; a host with other data would train, silently, on other
windows. So before the first step, the processes compare their settings and their data's identity.
"""

from __future__ import annotations

import hashlib
import json

import jax
import numpy as np
from jax.experimental import multihost_utils

from gpt2_jax.config import ConfigError
from gpt2_jax.workdir import data_fingerprint

DATA = "its data (tokenizer, shards or splits)"


def check_same_run(config, meta: dict) -> None:
    """ConfigError, on every process, naming what the first process that differs from process 0 was given."""
    if jax.process_count() == 1:
        return
    # data_dir may differ from host to host (where each mounts the data): the data's identity is compared instead.
    texts = {key: json.dumps(value, default=str) for key, value in config.to_dict().items() if key != "data_dir"}
    texts[DATA] = data_fingerprint(meta)
    names = sorted(texts)
    every = multihost_utils.process_allgather(np.asarray([digest(texts[name]) for name in names], np.int32))
    differs = every != every[0]  # [processes, names]
    if differs.any():
        process = int(np.flatnonzero(differs.any(axis=1))[0])
        what = ", ".join(name for name, differ in zip(names, differs[process]) if differ)
        raise ConfigError(f"process {process} of this run differs from process 0 in {what}: every process takes "
                          "the same command line and reads the same prepared data")


def digest(text: str) -> int:
    """31 bits of the text's SHA-256 (an int32 on every platform, with or without jax_enable_x64)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little") >> 1
