"""Documents into token shards, in worker processes: what `python -m gpt2_jax.prepare` runs.

Each document is tokenized by a worker (one tokenizer per process), `<|endoftext|>` goes between
documents, and a shard is written, with meta.json's progress, whenever `shard_tokens` have
gathered: an interrupted preparation resumes after its last complete shard. SIGTERM (`kill`,
`timeout`, Slurm) and SIGHUP (a terminal closed) stop it as Ctrl-C does: its workers ended, then `stopped by
SIGTERM`, exit 143 (129).
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import multiprocessing
import multiprocessing.pool
import os
import signal
import sys
import threading
from pathlib import Path

import numpy as np
from tqdm import tqdm

from gpt2_jax import shards
from gpt2_jax.corpus import count_documents, iter_documents
from gpt2_jax.interrupt import STOP_SIGNALS, Stopped, stop_as_ctrl_c
from gpt2_jax.tokenizer import get_tokenizer

_worker_tokenizer = None
_preparer = None  # the pid of the process that tokenizes (and, with --workers N, runs the pool)


def _start_worker(tokenizer_name: str, in_pool: bool = True) -> None:
    global _worker_tokenizer
    if in_pool:  # a stop signal to the whole process group (Ctrl-C, `timeout`, a hangup) is the preparer's to answer
        for signum in (signal.SIGINT, *STOP_SIGNALS):
            signal.signal(signum, signal.SIG_IGN)
        # The preparer SIGKILLed alone left them alive, printing BrokenPipeError tracebacks: a worker now dies with
        # it (Linux's PR_SET_PDEATHSIG = 1), or, writing a result as it dies, of the pipe's SIGPIPE, without a word.
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        if sys.platform == "linux":
            ctypes.CDLL(None).prctl(1, signal.SIGKILL)
    _worker_tokenizer = get_tokenizer(tokenizer_name)


class _Pool(multiprocessing.pool.Pool):
    """A Pool whose terminate() kills its workers (SIGKILL), as they ignore stop signals: a worker that one ended
    on its own could take a lock of the pool's queues with it, and leave terminate() waiting for it forever."""

    @staticmethod
    def Process(ctx, *args, **kwargs):
        process = ctx.Process(*args, **kwargs)
        process.terminate = process.kill
        return process

    @staticmethod
    def _help_stuff_finish(inqueue, task_handler, size):
        """terminate() takes the workers' queue (its read lock) and drains it until the task handler has ended.
        CPython's stops at the first moment the queue is empty, as when the handler is still pickling a task: it
        then writes that task into a pipe nobody reads any more, and terminate() waits for it forever."""
        inqueue._rlock.acquire()
        while task_handler.is_alive():
            if inqueue._reader.poll(0.01):
                inqueue._reader.recv_bytes()


def _stop(signum, frame):
    """SIGTERM or SIGHUP in the preparer: `Stopped` where it is, as Ctrl-C's KeyboardInterrupt is, so that the pool's
    workers are ended (tokenize_into_shards' finally) and the CLI says "stopped by SIGTERM". Nothing in a worker
    forked with it, until _start_worker has it ignore the signal."""
    if os.getpid() == _preparer:
        signal.signal(signum, signal.SIG_IGN)  # once: a second one would break the workers' ending (terminate)
        raise Stopped(signal.Signals(signum))


@contextlib.contextmanager
def _stop_signals_raise_stopped():
    """SIGTERM and SIGHUP raise `Stopped` (`_stop`) while in this block: where the handler is the default or a
    command's (interrupt.stop_as_ctrl_c; a program with its own keeps it) and in the main thread (the only one
    that may set handlers)."""
    global _preparer
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    ours = [signum for signum, handler in previous.items() if handler in (signal.SIG_DFL, stop_as_ctrl_c)] \
        if threading.current_thread() is threading.main_thread() else []
    _preparer = os.getpid() if ours else _preparer
    for signum in ours:
        signal.signal(signum, _stop)
    try:
        yield
    finally:
        for signum in ours:
            signal.signal(signum, previous[signum])


def _encode(text: str) -> np.ndarray:
    return _worker_tokenizer.encode_array(text).astype(shards.TOKEN_DTYPE)


@_stop_signals_raise_stopped()  # around the pool's start too: its workers are forked with the handler
def tokenize_into_shards(meta: dict, out_dir: Path, workers: int, eot: int) -> None:
    """Append shards to `meta` from document `meta["documents"]` on, saving progress per shard."""
    documents = itertools.islice(iter_documents(meta["inputs"], meta["text_field"]), meta["documents"], None)
    # Stop signals held back while the workers start (raised inside Pool(), they escape its clean-up, which
    # catches Exception only, and leave the workers running), and let through once `pool` can be ended.
    pool, pending, pending_tokens, count = None, [], 0, meta["documents"]
    end_of_text = np.asarray([eot], shards.TOKEN_DTYPE)
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, *STOP_SIGNALS})
    try:
        pool = _Pool(workers, _start_worker, (meta["tokenizer"],)) if workers > 1 else None
        if pool is None:
            _start_worker(meta["tokenizer"], in_pool=False)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        with tqdm(desc="tokenize", unit="doc", initial=count, total=count_documents(meta["inputs"])) as progress:
            for tokens in (pool.imap(_encode, documents, chunksize=16) if pool else map(_encode, documents)):
                if count:  # <|endoftext|> between documents
                    pending.append(end_of_text)
                pending.append(tokens)
                pending_tokens, count = pending_tokens + tokens.size + (count > 0), count + 1
                progress.update()
                if pending_tokens >= meta["shard_tokens"]:
                    _flush(meta, out_dir, pending, count)
                    pending, pending_tokens = [], 0
    finally:  # on an error too: a pool left to the garbage collector fails loudly at exit
        if pool:
            pool.terminate()
            pool.join()
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # if Pool() itself failed
    if not meta["shards"] and not pending_tokens:
        raise shards.DataError(f"no text found in {', '.join(meta['inputs'])}")
    if pending:
        _flush(meta, out_dir, pending, count)


def _flush(meta: dict, out_dir: Path, pending: list[np.ndarray], documents: int) -> None:
    meta["shards"].append(shards.write_shard(out_dir, len(meta["shards"]), pending))  # no copy of the shard made
    meta["documents"] = documents
    shards.write_meta(out_dir, meta)
