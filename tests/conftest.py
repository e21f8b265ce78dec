"""Shared fixtures: tiny random transformers GPT-2 checkpoints, and the fake 8-device CPU mesh."""

import json
import os
import subprocess

# Before jax is imported anywhere: 8 fake CPU devices for the sharding tests.
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
# The GPT-2 BPE files for tiktoken's offline cache (../shared/data/README.md).
_SHARED_TIKTOKEN = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "tiktoken")
if os.path.isdir(_SHARED_TIKTOKEN):
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", os.path.abspath(_SHARED_TIKTOKEN))

import numpy as np  # noqa: E402
import pytest  # noqa: E402

SHAKESPEARE = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "tinyshakespeare", "input.txt"))

# An awkward shape on purpose: odd vocabulary, head_dim 4, an MLP width that is not 4 * n_embd.
TINY_SHAPE = dict(vocab_size=101, n_positions=40, n_embd=20, n_layer=3, n_head=5, n_inner=36)


def random_hf_model(seed=0, **shape):
    """A transformers GPT2LMHeadModel with every tensor random (biases and LayerNorms too)."""
    import torch
    import transformers

    shape = {**TINY_SHAPE, **shape}
    config = transformers.GPT2Config(**shape, bos_token_id=shape["vocab_size"] - 1, eos_token_id=shape["vocab_size"] - 1)
    torch.manual_seed(seed)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(torch.randn_like(param) * (0.3 if name.endswith("bias") else 0.15) + (1.0 if "ln_" in name and name.endswith("weight") else 0.0))
    return model


@pytest.fixture(scope="session")
def hf_model():
    return random_hf_model()


@pytest.fixture(scope="session")
def hf_dir(hf_model, tmp_path_factory):
    """`save_pretrained` of the tiny model: config.json + model.safetensors."""
    path = tmp_path_factory.mktemp("hf_tiny")
    hf_model.save_pretrained(path)
    return path


def rel_error(ours, theirs):
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    return np.linalg.norm(ours - theirs) / np.linalg.norm(theirs)


def assert_one_line_error(result, message):
    """A CLI run that failed the way users should see it: exit 2, one `error:` line, no traceback."""
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and len(errors) == 1, result.stderr
    assert message in errors[0], errors[0]


def run_main(main, *args):
    """A CLI's `main(argv)` run in this process, reported as `subprocess.run` would (exit code, stdout, stderr):
    for the many bad-input cases, each a second or two faster than a new interpreter. One case per CLI still
    runs `python -m` itself."""
    import contextlib
    import io

    out, err, code = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(args))
        except SystemExit as exited:
            code = exited.code if isinstance(exited.code, int) else 1
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="session")
def shakespeare_bytes(tmp_path_factory):
    """Tiny Shakespeare, prepared as bytes with nanoGPT's 90/10 split."""
    from gpt2_jax.prepare import prepare

    path = tmp_path_factory.mktemp("shakespeare_bytes")
    prepare([SHAKESPEARE], path, tokenizer="byte", val_fraction=0.1)
    return path


def tiny_run_config(data_dir, **overrides):
    """The quickstart config shrunk to seconds on 8 fake devices."""
    from gpt2_jax.train_config import default_config

    c = default_config()
    c.data_dir = str(data_dir)
    c.n_layer, c.n_head, c.n_embd, c.block_size, c.vocab_pad_multiple, c.dtype = 2, 2, 32, 32, 1, "float32"
    c.batch_size, c.tokens_per_step = 8, 8 * 32
    c.learning_rate, c.warmup_steps, c.max_steps, c.b2 = 3e-3, 5, 40, 0.99
    c.log_every, c.eval_every, c.eval_batches, c.checkpoint_every = 1, 20, 2, 10
    c.num_samples = 0
    c.update(overrides)
    return c


def config_flags_of(config):
    """--config.KEY=VALUE flags that set every key of `config` (for the train CLI; None: left to the platform)."""
    return [f"--config.{key}={value}" for key, value in config.items()]


@pytest.fixture(scope="session")
def bpe_model_dir(tmp_path_factory):
    """A tiny random model with GPT-2's real vocabulary, so the BPE tokenizer is exercised."""
    path = tmp_path_factory.mktemp("hf_bpe")
    random_hf_model(seed=1, vocab_size=50257, n_positions=64, n_embd=16, n_layer=2, n_head=2, n_inner=None).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def byte_model_dir(tmp_path_factory):
    """A tiny random model over the 257 byte ids."""
    path = tmp_path_factory.mktemp("hf_byte")
    random_hf_model(seed=2, vocab_size=257, n_positions=64, n_embd=24, n_layer=2, n_head=3, n_inner=None).save_pretrained(path)
    return path


def snapshot(directory, skip=("tensorboard", "train.lock")):
    """{relative path: bytes} of every file under `directory` (a workdir: checkpoints, metrics, configs)."""
    from pathlib import Path

    root = Path(directory)
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.relative_to(root).parts[0] not in skip}


def read_only(path):
    """Make `path` read-only for this user, root included (root ignores permission bits, not `chattr +i`)."""
    if os.geteuid() != 0:
        path.chmod(0o555)
    elif subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
        pytest.skip("running as root where chattr +i is unavailable: no read-only directory to test with")
    return lambda: subprocess.run(["chattr", "-i", str(path)]) if os.geteuid() == 0 else path.chmod(0o755)


def unprivileged():
    """A command's prefix that runs it without root's right to read and write any file (where the tests run as
    root), so that a file made unreadable with chmod is unreadable to it."""
    import shutil

    if os.geteuid() != 0:
        return []
    if not shutil.which("setpriv"):
        pytest.skip("running as root without setpriv: no unreadable file to test with")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-dac_override,-dac_read_search"]


def step_of(line):
    """The step of a training console row (`step  33/150 | loss ...`), else None."""
    words = line.split()
    return int(words[1].split("/")[0]) if len(words) > 2 and words[0] == "step" and "/" in words[1] else None


@pytest.fixture(scope="session")
def shakespeare_bpe(tmp_path_factory):
    """Tiny Shakespeare in GPT-2 BPE tokens, nanoGPT's 90/10 split."""
    from gpt2_jax.prepare import prepare

    path = tmp_path_factory.mktemp("shakespeare_bpe")
    prepare([SHAKESPEARE], path, tokenizer="gpt2", val_fraction=0.1)
    return path


WORDS = "the a man woman dog runs jumps slowly into water after before ball red green house".split()


@pytest.fixture(scope="session")
def hellaswag_file(tmp_path_factory):
    """Twelve examples in the official hellaswag_val.jsonl format, random words, random labels."""
    rng = np.random.RandomState(0)
    path = tmp_path_factory.mktemp("hellaswag") / "hellaswag_val.jsonl"
    lines = []
    for i in range(12):
        context = " ".join(rng.choice(WORDS, rng.randint(5, 25)))
        endings = [" ".join(rng.choice(WORDS, rng.randint(2, 12))) + "." for _ in range(4)]
        lines.append(json.dumps({"ind": i, "activity_label": "Test", "ctx_a": context, "ctx_b": "", "ctx": context,
                                 "split": "val", "split_type": "indomain", "label": int(rng.randint(4)),
                                 "endings": endings, "source_id": f"test~{i}"}))
    path.write_text("\n".join(lines) + "\n")
    return path
