"""HF checkpoints <-> params: both file formats, the export round-trip, the CLI and its errors."""

import dataclasses
import json
import os
import pickle
import re
import shutil
import stat
import subprocess
import sys
import types

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import torch
import transformers
from conftest import assert_one_line_error, random_hf_model, read_only, rel_error, run_main, snapshot, unprivileged
from safetensors.numpy import save_file

from gpt2_jax import GPT2, GPT2Config, convert_cli, from_hf, hf_weights, to_hf
from gpt2_jax.checkpoint import load_params, save_params
from gpt2_jax.convert import ConversionError, hf_key_to_path, path_to_hf_key
from gpt2_jax.hf_files import CheckpointFileError, check_tokenizer_dir


def logits(config, params, ids):
    return np.asarray(GPT2(config).apply({"params": params}, ids))


def hf_logits(model_dir, ids):
    model = transformers.GPT2LMHeadModel.from_pretrained(model_dir).eval()
    with torch.no_grad():
        return model(torch.tensor(ids)).logits.numpy()


@pytest.fixture(scope="module")
def ids():
    return np.random.RandomState(0).randint(0, 101, (2, 23))


def test_key_map_is_a_rename():
    assert hf_key_to_path("transformer.h.11.mlp.c_proj.weight") == ("h_11", "mlp", "c_proj", "kernel")
    assert hf_key_to_path("transformer.ln_f.weight") == ("ln_f", "scale")
    assert hf_key_to_path("wte.weight") == ("wte", "embedding")  # the hub's gpt2 stores GPT2Model keys
    for path in [("h_0", "attn", "c_attn", "bias"), ("wpe", "embedding"), ("h_3", "ln_2", "scale")]:
        assert hf_key_to_path(path_to_hf_key(path)) == path


def test_pytorch_model_bin_with_legacy_keys_matches_safetensors(hf_model, hf_dir, tmp_path, ids):
    # Old checkpoints (like the hub's gpt2) carry attn.bias buffers and lm_head.weight: skipped.
    state_dict = {k: v.clone() for k, v in hf_model.state_dict().items()}
    state_dict["transformer.h.0.attn.bias"] = torch.tril(torch.ones(1, 1, 40, 40))
    state_dict["transformer.h.0.attn.masked_bias"] = torch.tensor(-1e4)
    torch.save(state_dict, tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text((hf_dir / "config.json").read_text())
    config, params = from_hf(str(tmp_path))
    with torch.no_grad():
        theirs = hf_model(torch.tensor(ids)).logits.numpy()
    assert rel_error(logits(config, params, ids), theirs) < 1e-5


def test_unprefixed_gpt2model_keys_load(hf_model, hf_dir, tmp_path, ids):
    state_dict = {k.removeprefix("transformer."): v.numpy() for k, v in hf_model.state_dict().items() if k != "lm_head.weight"}
    save_file(state_dict, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text((hf_dir / "config.json").read_text())
    config, params = from_hf(str(tmp_path))
    assert rel_error(logits(config, params, ids), hf_logits(hf_dir, ids)) < 1e-5


@pytest.mark.parametrize("file_name", ["model.safetensors", "pytorch_model.bin"])
def test_checkpoints_split_into_files_load_as_the_whole_one(hf_model, hf_dir, tmp_path, ids, file_name):
    """save_pretrained splits a model past its max_shard_size (gpt2-xl in fp32 under transformers 4's 5 GB) into
    files and an index of them; older .bin checkpoints the same way: both were refused as having no weights."""
    if file_name == "model.safetensors":
        hf_model.save_pretrained(tmp_path, max_shard_size="20KB")
        # As transformers: the shards before a pytorch_model.bin beside them (other weights here), every tensor of
        # a file whether its index lists it or not, files in a folder the index names
        torch.save(random_hf_model(seed=1).state_dict(), tmp_path / "pytorch_model.bin")
        index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
        del index["weight_map"]["transformer.ln_f.bias"]
        (tmp_path / "sub").mkdir()
        (tmp_path / "model-00003-of-00003.safetensors").rename(tmp_path / "sub" / "model-00003-of-00003.safetensors")
        index["weight_map"] = {name: file.replace("model-00003", "sub/model-00003")
                               for name, file in index["weight_map"].items()}
        (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    else:
        state_dict = hf_model.state_dict()
        files = {name: f"pytorch_model-0000{1 + i % 3}-of-00003.bin" for i, name in enumerate(state_dict)}
        for file in set(files.values()):
            torch.save({name: state_dict[name] for name in state_dict if files[name] == file}, tmp_path / file)
        (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": files}))
        (tmp_path / "config.json").write_text((hf_dir / "config.json").read_text())
    assert len(list(tmp_path.glob("**/*-of-*"))) == 3 and not (tmp_path / file_name).exists()
    config, params = from_hf(str(tmp_path))
    assert rel_error(logits(config, params, ids), hf_logits(tmp_path, ids)) < 1e-5


def test_a_hub_model_comes_with_its_safetensors_else_its_bin_weights(hf_model, tmp_path, ids, monkeypatch):
    """Which files a hub name downloads (huggingface_hub stood in for by a local copy that honours the patterns):
    config, tokenizer files and the safetensors weights, whole or in shards; .bin weights only where there are none."""
    import fnmatch

    import huggingface_hub

    def snapshot_download(name, allow_patterns):
        repo, snapshot = tmp_path / "hub" / name, tmp_path / "cache" / name
        for file in repo.iterdir():
            if any(fnmatch.fnmatch(file.name, pattern) for pattern in allow_patterns):
                snapshot.mkdir(parents=True, exist_ok=True)
                shutil.copy(file, snapshot / file.name)
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    hf_model.save_pretrained(tmp_path / "hub" / "someone" / "sharded", max_shard_size="20KB")
    torch.save(hf_model.state_dict(), tmp_path / "hub" / "someone" / "sharded" / "pytorch_model.bin")  # not fetched
    hf_model.save_pretrained(tmp_path / "hub" / "someone" / "old")
    torch.save(hf_model.state_dict(), tmp_path / "hub" / "someone" / "old" / "pytorch_model.bin")
    (tmp_path / "hub" / "someone" / "old" / "model.safetensors").unlink()
    for name in ("someone/sharded", "someone/old"):
        config, params = from_hf(name)
        assert rel_error(logits(config, params, ids), hf_logits(tmp_path / "hub" / name, ids)) < 1e-5
    assert {f.name for f in (tmp_path / "cache" / "someone" / "old").iterdir()} == {
        "config.json", "generation_config.json", "pytorch_model.bin"}
    assert not (tmp_path / "cache" / "someone" / "sharded" / "pytorch_model.bin").exists()


def test_a_config_json_may_name_the_shape_as_transformers_aliases_do(hf_dir, tmp_path, ids):
    """transformers reads num_attention_heads, hidden_size, num_hidden_layers and max_position_embeddings as
    n_head, n_embd, n_layer and n_positions: num_attention_heads was ignored (12 heads, logits 2.5 off)."""
    aliases = {"n_head": "num_attention_heads", "n_embd": "hidden_size", "n_layer": "num_hidden_layers",
               "n_positions": "max_position_embeddings"}
    config = json.loads((hf_dir / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({aliases.get(key, key): value for key, value in config.items()}))
    shutil.copy(hf_dir / "model.safetensors", tmp_path)
    config, params = from_hf(str(tmp_path))
    assert (config.n_head, config.n_embd, config.n_layer, config.n_positions) == (5, 20, 3, 40)
    assert rel_error(logits(config, params, ids), hf_logits(tmp_path, ids)) < 1e-5


def test_null_bos_and_eos_ids_load_export_and_sample_to_the_end(hf_model, tmp_path, ids):
    """transformers allows no bos/eos id (a model with a tokenizer of its own): they were refused."""
    hf_model.config.bos_token_id = hf_model.config.eos_token_id = None
    try:
        hf_model.save_pretrained(tmp_path / "hf")
    finally:
        hf_model.config.bos_token_id = hf_model.config.eos_token_id = 100
    config, params = from_hf(str(tmp_path / "hf"))
    assert config.bos_token_id is None and config.eos_token_id is None
    to_hf(config, params, tmp_path / "export")
    assert json.loads((tmp_path / "export" / "config.json").read_text())["eos_token_id"] is None
    assert rel_error(hf_logits(tmp_path / "export", ids), hf_logits(tmp_path / "hf", ids)) < 1e-6
    from gpt2_jax.sampling import generate

    ours = generate(GPT2(config), params, ids[:, :3], max_new_tokens=30, temperature=0.0)  # was: None == a token
    with torch.no_grad():
        theirs = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval().generate(
            torch.tensor(ids[:, :3]), do_sample=False, max_new_tokens=30, pad_token_id=None)
    assert np.array_equal(ours, theirs.numpy())


@pytest.mark.parametrize("file_name", ["model.safetensors", "pytorch_model.bin"])
def test_bfloat16_checkpoints_load_as_their_values_in_fp32(hf_model, tmp_path, ids, file_name):
    """Checkpoints saved in bf16 (many on the hub): safetensors reads them as ml_dtypes' bfloat16, which numpy
    does not call floating (they were refused); both formats give the bf16 values exactly, in fp32."""
    bf16_model = transformers.GPT2LMHeadModel(hf_model.config).eval()
    bf16_model.load_state_dict(hf_model.state_dict())
    bf16_model.to(torch.bfloat16).save_pretrained(tmp_path)  # model.safetensors
    if file_name == "pytorch_model.bin":
        torch.save(bf16_model.state_dict(), tmp_path / file_name)
        (tmp_path / "model.safetensors").unlink()
    config, params = from_hf(str(tmp_path))
    theirs = bf16_model.float()
    kernel = theirs.state_dict()["transformer.h.0.attn.c_attn.weight"].numpy()
    np.testing.assert_array_equal(np.asarray(params["h_0"]["attn"]["c_attn"]["kernel"]), kernel)
    with torch.no_grad():
        assert rel_error(logits(config, params, ids), theirs(torch.tensor(ids)).logits.numpy()) < 1e-5


# The peak memory a load adds (Linux's VmHWM), in a fresh process once a tiny model has loaded: the imports, jax's
# CPU client and the tracing of the param shapes are not the weights.
LOAD_PEAK = """
import sys
import jax, numpy as np, torch  # torch: pytorch_model.bin imports it, once
from gpt2_jax import from_hf

def high_water_mark():
    return int(next(line for line in open("/proc/self/status") if line.startswith("VmHWM")).split()[1]) * 1024

from_hf(sys.argv[2])
before = high_water_mark()
config, params = from_hf(sys.argv[1])
views = [np.asarray(leaf) for leaf in jax.tree.leaves(params)]  # as orbax's save reads them
print(high_water_mark() - before)
"""


def test_a_params_directory_is_saved_a_bounded_number_of_gigabytes_at_a_time(hf_dir, tmp_path, monkeypatch):
    """orbax copies out at most this much at once (its default, 96 GB, copied all the params a second time), and
    more than the largest array, which it must take whole (it refuses an array of the bound's size or more)."""
    from gpt2_jax.checkpoint import _in_flight_gb

    assert _in_flight_gb({"a": np.zeros(10, np.float32), "b": np.zeros((1000, 1000), np.float32)}) == 1
    assert _in_flight_gb({"wte": types.SimpleNamespace(nbytes=2_500_000_000), "b": np.zeros(3)}) == 3
    assert _in_flight_gb({"wte": types.SimpleNamespace(nbytes=2_000_000_000)}) == 3
    handlers = []
    handler = ocp.StandardCheckpointHandler
    monkeypatch.setattr(ocp, "StandardCheckpointHandler", lambda **kwargs: handlers.append(kwargs) or handler(**kwargs))
    config, params = from_hf(str(hf_dir))
    save_params(tmp_path / "flax", config, params)
    assert handlers == [{"save_concurrent_gb": 1}]
    reloaded = load_params(tmp_path / "flax")[1]
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(reloaded)))


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads Linux's VmHWM")
@pytest.mark.parametrize("file_name", ["model.safetensors", "pytorch_model.bin"])
def test_loading_holds_the_weights_about_once(hf_dir, tmp_path, file_name):
    """model.safetensors is read a tensor at a time, never whole beside the params: safetensors' load_file held the
    file's pages and a copy (100 MB of weights: 2.0x; gpt2-large from the CLI: 8.7 GiB peak for 3.1 GB)."""
    model = random_hf_model(vocab_size=1000, n_positions=64, n_embd=512, n_layer=8, n_head=8, n_inner=2048)
    model.save_pretrained(tmp_path)
    if file_name == "pytorch_model.bin":
        torch.save(model.state_dict(), tmp_path / file_name)
        (tmp_path / "model.safetensors").unlink()
    weights = sum(p.numel() * 4 for p in model.parameters())  # about 100 MB
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run([sys.executable, "-c", LOAD_PEAK, str(tmp_path), str(hf_dir)], capture_output=True,
                            text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.split()[-1]) < 1.4 * weights  # 1.15x and 1.06x


def test_export_opens_in_transformers_with_the_same_logits_and_reloads_identically(tmp_path, ids):
    config = GPT2Config(vocab_size=101, n_positions=40, n_embd=20, n_layer=3, n_head=5, n_inner=36, eos_token_id=100, bos_token_id=100)
    params = GPT2(config).init(jax.random.key(3), ids[:, :4])["params"]
    params = jax.tree.map(lambda x: x + 0.1 * jax.random.normal(jax.random.key(x.size), x.shape), params)  # non-zero biases too
    to_hf(config, params, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "generation_config.json", "model.safetensors"]
    assert rel_error(hf_logits(tmp_path, ids), logits(config, params, ids)) < 1e-5
    config_again, params_again = from_hf(str(tmp_path))
    assert config_again == config
    jax.tree.map(np.testing.assert_array_equal, params_again, params)


def test_export_cuts_a_padded_vocabulary(hf_dir, tmp_path, ids):
    config, params = from_hf(str(hf_dir))
    padding = np.ones((27, config.n_embd), np.float32)
    padded = {**params, "wte": {"embedding": np.concatenate([params["wte"]["embedding"], padding])}}
    to_hf(config, padded, tmp_path)
    assert rel_error(hf_logits(tmp_path, ids), hf_logits(hf_dir, ids)) < 1e-6


@pytest.mark.parametrize("change, message", [
    ({"n_layer": 2}, "h_2.attn.c_attn.bias: (60,) in the params, the config gives none"),  # a layer silently left out
    ({"vocab_size": 200}, "wte.embedding: (101, 20) in the params, the config gives (200, 20)"),  # transformers failed
    ({"params": True}, "params.h_0.attn.c_attn.bias: (60,) in the params, the config gives none"),  # {"params": params}
    ({"drop": "ln_f"}, "ln_f.bias: none in the params, the config gives (20,)"),
])
def test_export_of_params_that_do_not_fit_the_config_is_refused(hf_dir, tmp_path, change, message):
    config, params = from_hf(str(hf_dir))
    if "params" in change:
        params = {"params": params}
    elif "drop" in change:
        params = {k: v for k, v in params.items() if k != change["drop"]}
    else:
        config = dataclasses.replace(config, **change)
    with pytest.raises(ConversionError, match=re.escape(f"the params do not fit the config ({message}); pass the")):
        to_hf(config, params, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("umask, directory_mode, file_mode", [(0o022, 0o755, 0o644), (0o027, 0o750, 0o640)])
def test_exports_get_the_umasks_modes_not_private_ones(hf_dir, tmp_path, umask, directory_mode, file_mode):
    config, params = from_hf(str(hf_dir))
    previous = os.umask(umask)
    try:
        to_hf(config, params, tmp_path / "hf")  # safetensors writes its file 0600
        save_params(tmp_path / "flax", config, params)
    finally:
        os.umask(previous)
    for out in (tmp_path / "hf", tmp_path / "flax"):
        paths = [out, *out.rglob("*")]
        assert any(p.name == "model.safetensors" or p.name == "config.json" for p in paths)
        assert {stat.S_IMODE(p.stat().st_mode) for p in paths if p.is_dir()} == {directory_mode}
        assert {stat.S_IMODE(p.stat().st_mode) for p in paths if p.is_file()} == {file_mode}


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "gpt2_jax.convert", *args], capture_output=True, text=True)


def convert(*args):
    """The same command in this process (conftest.run_main)."""
    return run_main(convert_cli.main, *args)


def tiny_tokenizer_dir(path, tokens):
    """vocab.json with `tokens` entries and a merges.txt: the two files --tokenizer-dir needs."""
    path.mkdir()
    (path / "vocab.json").write_text(json.dumps({f"t{i}": i for i in range(tokens)}))
    (path / "merges.txt").write_text("#version: 0.2\n")
    return path


def test_cli_round_trip(hf_dir, tmp_path, ids):
    result = run_cli("--from-hf", str(hf_dir), "--out", str(tmp_path / "flax"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "flax" / "config.json").exists() and (tmp_path / "flax" / "params").is_dir()
    tokenizer_dir = tiny_tokenizer_dir(tmp_path / "tokenizer", transformers.GPT2Config.from_pretrained(hf_dir).vocab_size)
    result = run_cli("--to-hf", str(tmp_path / "flax"), "--out", str(tmp_path / "hf"), "--tokenizer-dir", str(tokenizer_dir))
    assert result.returncode == 0, result.stderr
    np.testing.assert_array_equal(hf_logits(tmp_path / "hf", ids), hf_logits(hf_dir, ids))
    for name in ("vocab.json", "merges.txt"):
        assert (tmp_path / "hf" / name).read_bytes() == (tokenizer_dir / name).read_bytes()
    result = run_cli("--to-hf", str(hf_dir), "--out", str(tmp_path / "hf_again"))  # any model reference
    assert result.returncode == 0, result.stderr
    np.testing.assert_array_equal(hf_logits(tmp_path / "hf_again", ids), hf_logits(hf_dir, ids))


def test_a_checkpoint_is_counted_before_its_tensors_are_read(hf_dir, tmp_path):
    # convert's progress bar has a total, and a damaged file is refused before the bar, not after an empty one.
    tensors = hf_weights.read_tensors(hf_dir)
    assert len(tensors) == len(transformers.GPT2LMHeadModel.from_pretrained(hf_dir).state_dict()) - 1  # lm_head: tied
    assert len(dict(tensors)) == len(tensors)
    shutil.copy(hf_dir / "config.json", tmp_path)
    (tmp_path / "model.safetensors").write_bytes((hf_dir / "model.safetensors").read_bytes()[:100])
    with pytest.raises(CheckpointFileError, match="unreadable safetensors file"):
        hf_weights.read_tensors(tmp_path)
    (tmp_path / "model.safetensors").write_bytes((hf_dir / "model.safetensors").read_bytes()[:-100])
    with pytest.raises(CheckpointFileError, match="unreadable safetensors file"):  # the header reads, a tensor not
        dict(hf_weights.read_tensors(tmp_path))
    (tmp_path / "model.safetensors").unlink()
    (tmp_path / "model.safetensors").mkdir()  # safetensors said "No such device (os error 19)"
    with pytest.raises(CheckpointFileError, match=r"model.safetensors: cannot read it \(Is a directory\)$"):
        hf_weights.read_tensors(tmp_path)


@pytest.mark.parametrize("weights", ["model.safetensors", "pytorch_model.bin"])
def test_a_weights_file_this_user_may_not_read_says_so(hf_model, hf_dir, tmp_path, weights):
    """safetensors said "No such file or directory" of a file it was not allowed to read; torch a PermissionError."""
    shutil.copytree(hf_dir, tmp_path / "hf")
    if weights == "pytorch_model.bin":
        (tmp_path / "hf" / "model.safetensors").unlink()
        torch.save(hf_model.state_dict(), tmp_path / "hf" / weights)
    (tmp_path / "hf" / weights).chmod(0)
    result = subprocess.run([*unprivileged(), sys.executable, "-m", "gpt2_jax.convert", "--from-hf",
                             str(tmp_path / "hf"), "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert_one_line_error(result, f"{tmp_path / 'hf' / weights}: cannot read it (Permission denied)")


SHARDED_CASES = ("index_not_json", "missing_shard", "shard_without_its_tensor", "tensor_in_two_files",
                 "unlisted_untied_head")


@pytest.mark.parametrize("case, message", [
    ("missing_dir", "no such directory"),
    ("no_weights", "no model.safetensors or pytorch_model.bin"),
    ("corrupt_safetensors", "unreadable safetensors"),
    ("corrupt_bin", "unreadable checkpoint"),
    ("wrong_shape", "does not match config"),
    ("unknown_key", "unexpected key"),
    ("missing_key", "missing 1 parameter"),
    ("bad_config", "not valid JSON"),
    ("unsupported_config", "scale_attn_by_inverse_layer_idx"),
    ("config_wrong_type", "layer_norm_epsilon='abc' must be a positive number"),
    ("config_a_list", "a config must be a JSON object"),
    ("config_list_eos", "eos_token_id=[1, 2] must be a token id (an integer >= 0) or null"),
    ("config_alias_disagrees", "num_attention_heads=4 and n_head=5 disagree"),  # transformers would take 4
    # transformers unties such a head (a warning) and uses it: was silently dropped, logits 23 off theirs
    ("untied_head", "lm_head.weight differs from transformer.wte.weight: an untied output head is not supported"),
    ("index_not_json", "model.safetensors.index.json: not a checkpoint's index"),
    ("missing_shard", "model-00002-of-00002.safetensors: cannot read it (No such file or directory)"),
    ("shard_without_its_tensor", "checkpoint is missing 1 parameter(s), e.g. transformer.wte.weight"),
    ("tensor_in_two_files", "transformer.wte.weight: found twice in the checkpoint"),
    ("unlisted_untied_head", "lm_head.weight differs from transformer.wte.weight"),
    # was: a shape mismatch that blamed the weights for what config.json left out
    ("config_no_n_embd", "n_embd=768 is not divisible by n_head=5 (config.json gives no n_embd: GPT-2 124M's taken)"),
    ("config_no_n_layer", "missing 108 parameter(s), e.g. transformer.h.10.attn.c_attn.bias (config.json gives no "
                          "n_layer: GPT-2 124M's taken)"),
    ("config_not_utf8", "config.json: not UTF-8 text (invalid start byte at byte 0)"),  # was: a traceback
    ("config_a_directory", "not a model directory (need config.json + model.safetensors"),
    ("bin_a_list", "not a state dict of tensors (list)"),
    ("bin_not_tensors", "'transformer.wte.weight' is not a tensor (int)"),
    ("bin_python_objects", "refused: it holds Python objects, not only tensors (print)"),
    # torch 2.6+ words a blocked module differently: its advice to load with weights_only=False was the message
    ("bin_runs_a_command", "refused: it holds Python objects, not only tensors (posix.system)"),
    ("bin_int_keys", "a key 3 is not a parameter name (int)"),  # was: AttributeError from convert.py
    ("bin_a_plain_pickle", "unreadable checkpoint (UnpicklingError: Unsupported operand"),  # and no UserWarning
    ("nan_values", "transformer.h.1.mlp.c_fc.weight: holds 1 NaN or infinite values"),
    ("int_values", "transformer.wpe.weight: holds int32 values, not floating-point weights"),
])
def test_bad_checkpoints_are_one_line_errors(hf_model, hf_dir, tmp_path, case, message):
    weights = {k: v.numpy().copy() for k, v in hf_model.state_dict().items()}
    config_text = (hf_dir / "config.json").read_text()
    (tmp_path / "config.json").write_text(config_text)
    if case == "missing_dir":
        tmp_path = tmp_path / "nothing_here"
    elif case == "corrupt_safetensors":
        (tmp_path / "model.safetensors").write_bytes((hf_dir / "model.safetensors").read_bytes()[:300])
    elif case == "corrupt_bin":
        (tmp_path / "pytorch_model.bin").write_bytes(b"not a zip file at all" * 10)
    elif case == "wrong_shape":
        save_file({**weights, "transformer.wpe.weight": np.zeros((7, 20), np.float32)}, tmp_path / "model.safetensors")
    elif case == "unknown_key":
        save_file({**weights, "transformer.h.0.attn.q_proj.weight": np.zeros((20, 20), np.float32)}, tmp_path / "model.safetensors")
    elif case == "missing_key":
        save_file({k: v for k, v in weights.items() if k != "transformer.ln_f.bias"}, tmp_path / "model.safetensors")
    elif case == "bad_config":
        (tmp_path / "config.json").write_text("{not json")
        save_file(weights, tmp_path / "model.safetensors")
    elif case == "unsupported_config":
        (tmp_path / "config.json").write_text(json.dumps({**json.loads(config_text), "scale_attn_by_inverse_layer_idx": True}))
        save_file(weights, tmp_path / "model.safetensors")
    elif case in ("config_no_n_embd", "config_no_n_layer"):
        (tmp_path / "config.json").write_text(json.dumps({k: v for k, v in json.loads(config_text).items()
                                                          if k != case.removeprefix("config_no_")}))
        save_file(weights, tmp_path / "model.safetensors")
    elif case == "config_not_utf8":
        (tmp_path / "config.json").write_bytes(b"\xff\xfe{\x00}")
        save_file(weights, tmp_path / "model.safetensors")
    elif case == "config_a_directory":
        (tmp_path / "config.json").unlink()
        (tmp_path / "config.json").mkdir()
        save_file(weights, tmp_path / "model.safetensors")
    elif case.startswith("config_"):
        changes = {"config_wrong_type": {"layer_norm_epsilon": "abc"}, "config_list_eos": {"eos_token_id": [1, 2]},
                   "config_alias_disagrees": {"num_attention_heads": 4}}
        config = [1, 2] if case == "config_a_list" else {**json.loads(config_text), **changes[case]}
        (tmp_path / "config.json").write_text(json.dumps(config))
        save_file(weights, tmp_path / "model.safetensors")
    elif case.startswith("bin_"):
        content = {"bin_a_list": [1, 2, 3], "bin_not_tensors": {"transformer.wte.weight": 3},
                   "bin_python_objects": {"transformer.wte.weight": PythonObject()},
                   "bin_runs_a_command": {"transformer.wte.weight": RunsACommand()},
                   "bin_int_keys": {3: torch.zeros(2)}, "bin_a_plain_pickle": {"a": np.zeros(2)}}[case]
        if case == "bin_a_plain_pickle":  # pickle's own format, protocol 4: not torch.save's zip
            (tmp_path / "pytorch_model.bin").write_bytes(pickle.dumps(content, protocol=4))
        else:
            torch.save(content, tmp_path / "pytorch_model.bin")
    elif case == "untied_head":
        head = weights["transformer.wte.weight"] + 1e-3
        save_file({**weights, "lm_head.weight": head}, tmp_path / "model.safetensors")
    elif case in SHARDED_CASES:
        names = sorted(name for name in weights if name != "lm_head.weight")  # transformer.wte.weight last
        files = {name: f"model-0000{1 + (i >= 5)}-of-00002.safetensors" for i, name in enumerate(names)}
        (tmp_path / "model.safetensors.index.json").write_text(
            "{" if case == "index_not_json" else json.dumps({"weight_map": files}))
        first, second = contents = {file: {name: weights[name] for name in names if files[name] == file}
                                    for file in sorted(set(files.values()))}
        if case == "missing_shard":
            del contents[second]
        elif case == "shard_without_its_tensor":
            del contents[second]["transformer.wte.weight"]
        elif case == "tensor_in_two_files":
            contents[first]["transformer.wte.weight"] = weights["transformer.wte.weight"]
        elif case == "unlisted_untied_head":  # transformers loads what a file holds, listed or not
            contents[first]["lm_head.weight"] = weights["transformer.wte.weight"] + 1e-3
        for file, tensors in contents.items():
            save_file(tensors, tmp_path / file)
    elif case.endswith("_values"):
        if case == "nan_values":
            weights["transformer.h.1.mlp.c_fc.weight"][3, 4] = np.nan
        else:
            weights["transformer.wpe.weight"] = weights["transformer.wpe.weight"].astype(np.int32)
        save_file(weights, tmp_path / "model.safetensors")
    with pytest.raises((ConversionError, CheckpointFileError, ValueError), match=re.escape(message)):
        from_hf(str(tmp_path))
    result = convert("--from-hf", str(tmp_path), "--out", str(tmp_path / "out"))
    assert_one_line_error(result, message)
    assert "weights_only=False" not in result.stderr  # never advise running a checkpoint's code
    assert "Warning" not in result.stderr  # torch's, of a plain pickle's protocol: two lines more


class PythonObject:
    """What a pickle can hold besides tensors: loading it would run code (here, print)."""

    def __reduce__(self):
        return print, ("this ran",)


class RunsACommand:
    """A pickle that runs a shell command when loaded (harmless here: `true`)."""

    def __reduce__(self):
        return os.system, ("true",)


def test_a_params_directory_with_a_flipped_bit_is_refused(hf_dir, tmp_path):
    """Orbax gives back whatever bytes are on disk; the checksums written beside the params catch a bit that
    storage flipped. A directory written before them (no checksums.json) still loads."""
    assert convert("--from-hf", str(hf_dir), "--out", str(tmp_path / "flax")).returncode == 0
    config, params = load_params(tmp_path / "flax")
    embedding = np.array(params["wte"]["embedding"])
    embedding.view(np.uint32)[3, 4] ^= 1 << 29  # an exponent bit: 0.02 becomes ~1e37, in a valid file
    params["wte"]["embedding"] = embedding
    shutil.rmtree(tmp_path / "flax" / "params")
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(tmp_path / "flax" / "params", params)
    assert_one_line_error(convert("--to-hf", str(tmp_path / "flax"), "--out", str(tmp_path / "hf")),
                          "flax/params: corrupt (wte.embedding differs from its checksum); write it again")
    assert not (tmp_path / "hf").exists()
    (tmp_path / "flax" / "checksums.json").write_text("[1, 2]")
    assert_one_line_error(convert("--to-hf", str(tmp_path / "flax"), "--out", str(tmp_path / "hf")),
                          "flax/checksums.json: unreadable (not a JSON object)")
    (tmp_path / "flax" / "checksums.json").unlink()
    np.testing.assert_array_equal(load_params(tmp_path / "flax")[1]["wte"]["embedding"], embedding)


def test_a_damaged_params_directory_is_one_line_that_says_what_failed(hf_dir, tmp_path):
    """was: "unreadable (Exception)", and an absl WARNING line before it for damaged metadata"""
    assert convert("--from-hf", str(hf_dir), "--out", str(tmp_path / "flax")).returncode == 0
    shutil.copytree(tmp_path / "flax", tmp_path / "metadata")
    (tmp_path / "metadata" / "params" / "_METADATA").write_text('{"tree_metadata')
    largest = max((tmp_path / "flax" / "params" / "ocdbt.process_0" / "d").iterdir(), key=lambda f: f.stat().st_size)
    largest.write_bytes(largest.read_bytes()[:100])
    for damaged, reason in (("flax", "ValueError: OUT_OF_RANGE: Error reading"),
                            ("metadata", "JSONDecodeError: Unterminated string")):
        result = convert("--to-hf", str(tmp_path / damaged), "--out", str(tmp_path / "hf"))
        assert_one_line_error(result, f"{damaged}/params: unreadable ({reason}")
        assert "; write it again (python -m gpt2_jax.convert --from-hf ... --overwrite)" in result.stderr
    assert convert("--from-hf", str(hf_dir), "--out", str(tmp_path / "mine")).returncode == 0
    for file in (tmp_path / "mine" / "params").rglob("*"):
        file.chmod(0) if file.is_file() else None
    result = subprocess.run([*unprivileged(), sys.executable, "-m", "gpt2_jax.convert", "--to-hf",
                             str(tmp_path / "mine"), "--out", str(tmp_path / "hf")], capture_output=True, text=True)
    # the machine refused: nothing is damaged
    assert_one_line_error(result, "mine/params: unreadable (Permission denied); rerun once it can be read")


def test_a_gpt2_vocabulary_export_carries_a_tokenizer_transformers_opens(bpe_model_dir, tmp_path):
    assert run_cli("--from-hf", str(bpe_model_dir), "--out", str(tmp_path / "flax")).returncode == 0
    result = run_cli("--to-hf", str(tmp_path / "flax"), "--out", str(tmp_path / "hf"))
    assert result.returncode == 0, result.stderr
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    from gpt2_jax.tokenizer import get_tokenizer

    text = "Hello, I'm a language model, naïve café"
    assert tokenizer(text)["input_ids"] == get_tokenizer("gpt2").encode(text)
    assert tokenizer.eos_token_id == 50256


def test_an_output_of_another_kind_is_refused_unless_overwrite(hf_dir, tmp_path):
    workdir = tmp_path / "run"  # what a training run leaves: its config.json must survive a mistyped --out
    (workdir / "checkpoints" / "10").mkdir(parents=True)
    (workdir / "config.json").write_text('{"n_layer": 2}')
    (workdir / "checkpoints" / "10" / "params").write_bytes(b"weights")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    (tmp_path / "file").write_text("a file")
    before = snapshot(tmp_path)
    for out, message in [(workdir, "is not empty and not just a params directory"),
                         (tmp_path / "notes", "is not empty and not just a params directory"),
                         (tmp_path / "file", "is a file")]:
        assert_one_line_error(convert("--from-hf", str(hf_dir), "--out", str(out)), f"{out} {message}")
    assert_one_line_error(convert("--to-hf", str(hf_dir / "no"), "--out", str(tmp_path / "notes")),
                          "is not empty and not just a Hugging Face model directory")
    assert snapshot(tmp_path) == before
    result = convert("--from-hf", str(hf_dir), "--out", str(tmp_path / "notes"), "--overwrite")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "notes").iterdir()) == ["checksums.json", "config.json", "params"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "notes", "run"]  # no temporary left beside it


def test_an_output_that_is_inside_or_around_its_source_is_refused_even_with_overwrite(hf_dir, tmp_path):
    source = tmp_path / "model"
    source.mkdir()
    for f in hf_dir.iterdir():
        (source / f.name).write_bytes(f.read_bytes())
    (source / "sub").mkdir()  # as a workdir's checkpoints/
    before = snapshot(tmp_path)
    for out in (source, source / "sub", tmp_path):
        assert_one_line_error(convert("--to-hf", str(source), "--out", str(out), "--overwrite"),
                              "would replace its own source")
    assert snapshot(tmp_path) == before


def test_an_output_that_cannot_be_put_in_place_is_refused_before_any_work(hf_dir, tmp_path, monkeypatch):
    """--out is written beside itself, in its parent folder, then renamed into place: a mount point (which cannot
    be renamed) or a read-only parent folder is one line that says so, before the model is read."""
    monkeypatch.setattr(convert_cli, "load_model", lambda *args, **kwargs: pytest.fail("the model was read first"))
    mount = tmp_path / "mnt"
    mount.mkdir()
    ismount = os.path.ismount
    monkeypatch.setattr(os.path, "ismount", lambda path: os.fspath(path) == str(mount) or ismount(path))
    for direction in ("--from-hf", "--to-hf"):
        assert_one_line_error(convert(direction, str(hf_dir), "--out", str(mount)),
                              f"--out {mount} is a mount point, which cannot be replaced")
    (tmp_path / "ro").mkdir()
    writable = read_only(tmp_path / "ro")
    try:
        for out in (tmp_path / "ro" / "hf", tmp_path / "ro" / "new" / "hf"):
            assert_one_line_error(convert("--to-hf", str(hf_dir), "--out", str(out)),
                                  f"cannot write {out}: its parent folder {tmp_path / 'ro'} cannot be written here")
    finally:
        writable()


def test_a_conversion_on_a_full_disk_is_one_line_and_leaves_no_output(hf_dir, tmp_path, monkeypatch):
    """Neither library raises an OSError for a write that failed: safetensors its SafetensorError, orbax a
    ValueError after hundreds of lines of its own. Each was a traceback. Their messages are a full tmpfs's."""
    import orbax.checkpoint as ocp
    import safetensors.numpy
    from safetensors import SafetensorError

    def full_disk(path):
        with open(path, "wb") as file:
            file.write(b"part of it")

    def save_file(state_dict, path, metadata=None):
        full_disk(path)
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    def save(self, directory, params, **kwargs):
        directory.mkdir()
        full_disk(directory / "d")
        raise ValueError(f"RESOURCE_EXHAUSTED: Error writing \"wte.embedding/0.0\" in OCDBT database at {directory}: "
                         f"Failed to write 568066 bytes to file 14: No space left on device [os_error_code='28']")

    monkeypatch.setattr(safetensors.numpy, "save_file", save_file)
    monkeypatch.setattr(ocp.Checkpointer, "save", save)
    for direction, out in (("--to-hf", tmp_path / "hf"), ("--from-hf", tmp_path / "flax")):
        assert_one_line_error(convert(direction, str(hf_dir), "--out", str(out)),
                              f"cannot write {out}: No space left on device")
        assert list(tmp_path.iterdir()) == []  # neither the output nor its temporary directory


def test_a_new_export_replaces_the_old_one_whole(bpe_model_dir, byte_model_dir, tmp_path):
    out = tmp_path / "hf"
    for model in (bpe_model_dir, byte_model_dir):  # GPT-2 BPE first (tokenizer files), then bytes (none)
        assert convert("--from-hf", str(model), "--out", str(tmp_path / "flax")).returncode == 0  # same kind: replaced
        result = convert("--to-hf", str(tmp_path / "flax"), "--out", str(out))
        assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "generation_config.json", "model.safetensors"]
    assert transformers.GPT2Config.from_pretrained(out).vocab_size == 257


def test_a_tokenizer_json_alone_is_checked_by_its_ids_added_tokens_included(tmp_path):
    vocab = {"model": {"vocab": {f"t{i}": i for i in range(256)}}, "added_tokens": [{"content": "<|eot|>", "id": 256}]}
    (tmp_path / "tokenizer.json").write_text(json.dumps(vocab))
    check_tokenizer_dir(tmp_path, 257)  # ids 0..256: fits
    with pytest.raises(CheckpointFileError, match="its ids reach 256 and the model has 256 rows"):
        check_tokenizer_dir(tmp_path, 256)


def test_a_tokenizer_dir_that_does_not_fit_is_one_line(hf_dir, byte_model_dir, tmp_path, monkeypatch):
    """Missing, without GPT-2's files, or with ids the model has no row for: refused before the weights are read."""
    monkeypatch.setattr(convert_cli, "load_model", lambda *args, **kwargs: pytest.fail("the weights were read first"))
    (tmp_path / "empty").mkdir()
    too_big = tiny_tokenizer_dir(tmp_path / "gpt2_like", 258)  # the byte model has 257 rows
    (tmp_path / "a_file").write_text("")  # was: 'no such directory'
    for tokenizer_dir, message in (("/no/such", "/no/such: no such directory to copy tokenizer files from"),
                                   (tmp_path / "a_file", "a_file: not a directory to copy tokenizer files from"),
                                   (tmp_path / "empty", "empty: no vocab.json and merges.txt, nor tokenizer.json"),
                                   (too_big, "vocab.json: its ids reach 257 and the model has 257 rows: not this")):
        result = convert("--to-hf", str(byte_model_dir), "--out", str(tmp_path / "hf"), "--tokenizer-dir", str(tokenizer_dir))
        assert_one_line_error(result, message)
        assert not (tmp_path / "hf").exists()
    assert_one_line_error(convert("--to-hf", str(byte_model_dir), "--out", " "), "--out is empty")


def test_a_tokenizer_dir_with_from_hf_is_refused_not_ignored(hf_dir, tmp_path):
    result = convert("--from-hf", str(hf_dir), "--out", str(tmp_path / "flax"), "--tokenizer-dir", str(hf_dir))
    assert_one_line_error(result, "--tokenizer-dir is for --to-hf")
    assert not (tmp_path / "flax").exists()
