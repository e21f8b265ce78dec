"""Every configs/*.py loads, validates on a plausible machine, and describes the model it says; the
bytes-against-BPE pairs differ only where the tokenizer makes them, at equal FLOPs. Settings that cannot
train, and files that are not configs, are refused in one line before the first step."""

import importlib.util
import math
import re
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import pytest
from absl import flags
from conftest import SHAKESPEARE, assert_one_line_error, run_main, tiny_run_config

from gpt2_jax import sharding
from gpt2_jax.config import ConfigError
from gpt2_jax.errors import UserError
from gpt2_jax.flops import train_flops_per_token
from gpt2_jax.model import GPT2
from gpt2_jax.tokenizer import get_tokenizer
from gpt2_jax.train import main, train
from gpt2_jax.train_config import default_config, model_config, validate
from gpt2_jax.train_flags import parse_flags

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.py"))
EXPECTED_PARAMS = {"gpt2_124m": 124.4e6, "gpt2_350m": 354.8e6, "gpt2_774m": 774.0e6, "gpt2_1558m": 1557.6e6}


def load_module(path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load(path):
    return load_module(path).get_config()


def vocab_of(path):
    return 257 if "byte" in path.stem else 50257


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_loads_validates_and_shapes(path):
    config = load(path)
    assert set(config.keys()) == set(default_config().keys())  # no typo'd keys
    cpu_sized = path.stem.startswith(("shakespeare", "finetune"))
    validate(config, n_devices=2 if cpu_sized else 8, n_processes=1)
    vocab = vocab_of(path)
    model = GPT2(model_config(config, vocab, vocab - 1), vocab_pad_multiple=config.vocab_pad_multiple)
    params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"]
    count = sum(x.size for x in jax.tree.leaves(params)) - (params["wte"]["embedding"].shape[0] - vocab) * config.n_embd
    if path.stem in EXPECTED_PARAMS:
        assert count == pytest.approx(EXPECTED_PARAMS[path.stem], rel=1e-3)
    sharding.tree_shardings(sharding.make_mesh(config.fsdp), params)  # the rules place every param


def training_flops(path):
    config = load(path)
    return train_flops_per_token(model_config(config, vocab_of(path), vocab_of(path) - 1)), config


def differing_keys(a, b):
    return {key for key in a.keys() if a[key] != b[key]}


def test_the_shakespeare_pair_differs_only_by_tokenizer_at_equal_flops_and_text_per_window():
    configs = Path(__file__).parent.parent / "configs"
    (bpe_flops, bpe), (byte_flops, byte) = (training_flops(configs / f"shakespeare_{t}_pair.py")
                                            for t in ("bpe", "byte"))
    assert differing_keys(bpe, byte) == {"data_dir", "block_size", "vocab_pad_multiple", "tokens_per_step", "max_steps",
                                         "warmup_steps", "log_every", "eval_every", "eval_batches", "checkpoint_every"}
    assert bpe.tokens_per_step // bpe.block_size == byte.tokens_per_step // byte.block_size  # windows per step
    assert bpe_flops * bpe.tokens_per_step * bpe.max_steps == pytest.approx(
        byte_flops * byte.tokens_per_step * byte.max_steps, rel=1e-3)
    bpe_tokenizer = get_tokenizer("gpt2")
    tokens = bpe_tokenizer.encode(open(SHAKESPEARE, encoding="utf-8").read())
    train = tokens[: int(len(tokens) * 0.9)]  # nanoGPT's split, as prepare.py makes it
    bytes_per_token = bpe_tokenizer.token_bytes()[train].sum() / len(train)
    assert byte.block_size == round(bpe.block_size * bytes_per_token)  # the same text per window


def test_the_124m_byte_config_matches_the_bpe_recipes_flops_per_byte_and_bytes_per_step():
    configs = Path(__file__).parent.parent / "configs"
    bytes_per_token = load_module(configs / "gpt2_124m_byte.py").BYTES_PER_BPE_TOKEN
    (bpe_flops, bpe), (byte_flops, byte) = (training_flops(configs / f"{name}.py")
                                            for name in ("gpt2_124m", "gpt2_124m_byte"))
    assert byte_flops == pytest.approx(bpe_flops / bytes_per_token, rel=0.01)
    assert byte.tokens_per_step == pytest.approx(bpe.tokens_per_step * bytes_per_token, rel=0.001)
    assert byte.max_steps == bpe.max_steps and byte.block_size == bpe.block_size == 1024
    assert byte.eval_batches * byte.batch_size * byte.block_size == pytest.approx(
        bpe.eval_batches * bpe.batch_size * bpe.block_size * bytes_per_token, rel=0.01)


# Found by trying: each of these trained (silently wrong) or failed later with a traceback.
@pytest.mark.parametrize("overrides, message", [
    ({"vocab_pad_multiple": 0}, "vocab_pad_multiple=0 must be at least 1"),
    ({"vocab_pad_multiple": -7}, "vocab_pad_multiple=-7 must be at least 1"),
    ({"warmup_steps": -3}, "warmup_steps=-3 must be >= 0 (0: no warmup)"),
    ({"max_steps": 30}, "warmup_steps=715 must be below max_steps=30 (a shorter run: lower --config.warmup_steps too)"),
    ({"max_steps": 10**15}, "max_steps=1000000000000000 must be below 2**31 = 2,147,483,648: steps are counted in "
                            "int32"),  # was: a traceback at the first console line (its ETA), after compiling
    ({"max_steps": 10**20}, "max_steps=100000000000000000000 must be below 2**31"),
    ({"max_steps": 2**31 - 1, "warmup_steps": 2**31}, "warmup_steps=2147483648 must be below 2**31"),
    ({"eval_every": 2**31}, "eval_every=2147483648 must be below 2**31"),
    ({"grad_clip": -1.0}, "grad_clip=-1.0 must be > 0 (the largest gradient norm kept; inf: no clipping)"),
    ({"grad_clip": 0.0}, "grad_clip=0.0 must be > 0"),  # optax would zero every update
    ({"grad_clip": math.nan}, "grad_clip=nan must be > 0"),
    ({"b1": -2.0}, "b1=-2.0 must be in [0, 1)"),
    ({"b2": 1.5}, "b2=1.5 must be in [0, 1)"),
    ({"b2": 1.0}, "b2=1.0 must be in [0, 1)"),
    ({"eps": -1.0}, "eps=-1.0 must be a finite number > 0"),
    ({"eps": 0.0}, "eps=0.0 must be a finite number > 0"),
    ({"eps": math.inf}, "eps=inf must be a finite number > 0"),
    ({"weight_decay": -5.0}, "weight_decay=-5.0 must be a finite number >= 0 (0: no decay)"),
    ({"weight_decay": math.nan}, "weight_decay=nan must be a finite number >= 0"),
    ({"peak_flops": math.nan}, "num_samples, sample_tokens, hellaswag_limit, cpu_devices and peak_flops must be >= 0"),
    ({"fsdp": -1}, "fsdp=-1 must be >= 0 (0: all devices)"),  # was: 'does not divide the 1 device'
    # ConfigDict lets a config file set None: '<' not supported between 'int' and 'NoneType', a traceback
    ({"learning_rate": None}, "learning_rate=None must be a float, as its default 0.0006 is"),
    ({"batch_size": None}, "batch_size=None must be an int, as its default 16 is"),
    ({"hellaswag": None}, "hellaswag=None must be a str"),
])
def test_validate_names_the_key_and_its_allowed_range(overrides, message):
    config = default_config()
    config.data_dir = "/data"
    config.update(overrides)
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate(config, n_devices=1, n_processes=1)


@pytest.mark.parametrize("overrides, message", [
    ({"sample_prompt": "x" * 33}, "sample_prompt is 33 tokens, longer than the context (block_size=32); shorten it, "
                                  "or set num_samples=0"),  # 33 bytes, block_size 32
    ({"sample_prompt": "a\udcff"}, "sample_prompt is not valid UTF-8 (at character 1)"),  # a traceback
    ({"sample_tokens": 10**8}, "sample_tokens=100000000 must be at most 1,000,000"),  # was: at the first evaluation
])
def test_sample_settings_that_cannot_be_sampled_are_refused_before_the_first_step(shakespeare_bytes, tmp_path,
                                                                                    overrides, message):
    config = tiny_run_config(shakespeare_bytes, num_samples=1, **overrides)
    with pytest.raises(ConfigError, match=re.escape(message)):
        train(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name, message", [
    ("five.py", "get_config() returned an int, not an ml_collections.ConfigDict; make {d}/five.py"),
    ("none.py", "get_config() returned None, not an ml_collections.ConfigDict; make {d}/none.py"),  # a "usage:"
    ("", "cannot load --config: {d} is a directory, not a config file (configs/NAME.py)"),
    ("typo.py", "cannot use --config {d}/typo.py: its config has unknown key(s) learnig_rate; build it on"),
    ("own.py", "cannot use --config {d}/own.py: its config has no "),
    ("own.py --config.max_steps=3", "cannot use --config {d}/own.py: its config has no "),  # was an AttributeError
], ids=["returns_an_int", "returns_none", "a_directory", "a_typo", "not_built_on_the_defaults", "overridden"])
def test_a_config_that_is_not_a_config_file_is_one_line_naming_it(tmp_path, name, message):
    (tmp_path / "five.py").write_text("def get_config():\n    return 5\n")
    (tmp_path / "none.py").write_text("def get_config():\n    pass\n")
    (tmp_path / "typo.py").write_text("from gpt2_jax.train_config import default_config\n\ndef get_config():\n"
                                      "    c = default_config()\n    c.learnig_rate = 0.5  # kept, and ignored\n"
                                      "    return c\n")
    (tmp_path / "own.py").write_text("import ml_collections\n\ndef get_config():\n"
                                     "    return ml_collections.ConfigDict({'learning_rate': 0.5})\n")
    name, *overrides = name.split() or [""]
    result = run_main(main, "train", f"--config={tmp_path / name}", f"--workdir={tmp_path / 'run'}", *overrides)
    assert_one_line_error(result, message.format(d=tmp_path))
    assert not (tmp_path / "run").exists()


def test_the_command_line_parsed_twice_in_one_process_gives_each_call_its_own_overrides():
    """`main(argv)` from a notebook or a sweep: config_flags read --config.KEY from sys.argv, not argv, so an
    override was an "Unknown command line flag", and one that an earlier call had given was "defined twice"; a flag
    left out took the earlier call's value."""
    program_argv = list(sys.argv)
    calls = [["--config.max_steps=7"], [], ["--config.max_steps=9", "--config.batch_size=5"], []]
    configs = [parse_flags(["train", f"--config={CONFIGS[0].parent / 'shakespeare_byte.py'}", "--workdir=run",
                            *overrides])[0] for overrides in calls]
    assert [(config.max_steps, config.batch_size) for config in configs] == [(7, 6), (2000, 6), (9, 5), (2000, 6)]
    assert sys.argv == program_argv
    with pytest.raises(UserError, match="^usage: "):  # not the earlier call's --workdir
        parse_flags(["train", f"--config={CONFIGS[0].parent / 'shakespeare_byte.py'}"])


def test_the_command_line_parsed_in_a_program_with_absl_flags_of_its_own_keeps_them():
    """A sweep with absl flags of its own (`--trials=5`) that calls main(argv): each call reset the program's flags
    to their defaults, and one that failed left them all unparsed (reading one raised)."""
    flags.DEFINE_integer("sweep_trials", 1, "a flag of the program that parses train's command line")
    try:
        flags.FLAGS(["sweep", "--sweep_trials=5"])
        parse_flags(["train", f"--config={CONFIGS[0].parent / 'shakespeare_byte.py'}", "--workdir=run"])
        with pytest.raises(UserError, match="max_steps"):
            parse_flags(["train", f"--config={CONFIGS[0].parent / 'shakespeare_byte.py'}", "--config.max_steps=x"])
        assert flags.FLAGS.sweep_trials == 5
    finally:
        delattr(flags.FLAGS, "sweep_trials")


def test_the_kernel_settings_are_left_to_the_platform_unless_the_command_line_sets_them(tmp_path):
    """split_qkv and fused_norm default to None (accelerator.model_kernels decides); True and False are typed
    overrides, None hands a config file's choice back to the platform (the last value counts, as absl's does),
    and another value is one line."""
    config_file = f"--config={CONFIGS[0].parent / 'gpt2_124m.py'}"
    config = parse_flags(["train", config_file, "--workdir=run"])[0]
    assert (config.split_qkv, config.fused_norm) == (None, None)
    config = parse_flags(["train", config_file, "--workdir=run", "--config.fused_norm=True",
                          "--config.split_qkv=False"])[0]
    assert (config.split_qkv, config.fused_norm) == (False, True)
    config_file_choosing = tmp_path / "choosing.py"
    config_file_choosing.write_text("from gpt2_jax.train_config import default_config\n\ndef get_config():\n"
                                    "    c = default_config()\n    c.fused_norm, c.split_qkv = False, True\n"
                                    "    return c\n")
    argv = ["train", f"--config={config_file_choosing}", "--workdir=run"]
    config = parse_flags(argv)[0]
    assert (config.fused_norm, config.split_qkv) == (False, True)
    config = parse_flags(argv + ["--config.fused_norm=None", "-config.split_qkv=none"])[0]  # absl's one dash too
    assert (config.fused_norm, config.split_qkv) == (None, None)
    config = parse_flags(argv + ["--config.fused_norm=True", "--config.fused_norm=None", "--config.split_qkv=None",
                                 "--config.split_qkv"])[0]
    assert (config.fused_norm, config.split_qkv) == (None, True)
    config = parse_flags(argv + ["--config.fused_norm=None", "--config.fused_norm=t", "--config.split_qkv=None",
                                 "--noconfig.split_qkv"])[0]  # absl's other spellings of True and False
    assert (config.fused_norm, config.split_qkv) == (True, False)
    for value in ("maybe", ""):
        with pytest.raises(UserError, match=f"^--config.fused_norm={value}: fused_norm is True, False or None"):
            parse_flags(["train", config_file, "--workdir=run", f"--config.fused_norm={value}"])
    with pytest.raises(UserError, match="^--config.KEY=VALUE overrides a config file's key: give the file too"):
        parse_flags(["train", "--workdir=run", "--config.fused_norm=True"])
    with pytest.raises(TypeError, match="yes is of original type <class 'str'> and cannot be casted"):
        default_config().fused_norm = "yes"  # a config file's (config_flags makes it one line)
    config = ml_collections.ConfigDict({**default_config().to_dict(), "data_dir": "data", "fused_norm": "yes"})
    with pytest.raises(ConfigError, match="^fused_norm='yes' must be a bool or None, as its default None is$"):
        validate(config, 1, 1)
