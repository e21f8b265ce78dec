"""The benchmark scripts' variants: the train CLI that bench_train.py --cli-steps runs is the variant it timed."""

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import model_variants  # noqa: E402


def parse(*argv):
    parser = argparse.ArgumentParser()
    model_variants.add_flags(parser)
    return parser.parse_args(argv)


def test_the_cli_run_gets_the_variants_settings_and_the_platforms_choice_for_the_rest():
    assert model_variants.config_overrides(parse()) == []  # the CLI's own choice, as the bench's default
    variant = parse("--fused-norm", "off", "--split-qkv", "on", "--residual-dtype", "bfloat16")
    assert model_variants.config_overrides(variant) == ["--config.split_qkv=True", "--config.fused_norm=False",
                                                        "--config.residual_dtype=bfloat16"]
    assert model_variants.config_overrides(parse("--autodiff-gelu")) == []  # not a setting of the CLI


def test_bench_variants_reads_the_train_clis_rate_from_the_line_bench_train_prints():
    import bench_variants

    printed = f"# its metrics.jsonl: median tokens_per_sec {551_704.4:,.0f}, mfu {0.4771:.1%}, peak memory 24.3 GiB"
    assert "# its metrics.jsonl: median tokens_per_sec {logged['tokens_per_sec']:,.0f}, mfu {logged['mfu']:.1%}" in (
        Path(bench_variants.__file__).parent / "bench_train.py").read_text()  # bench_train's format
    assert bench_variants.CLI_ROW.search(f"# other\n{printed}\n").groups() == ("551,704", "47.7%")


def test_bench_train_profiles_a_peer_in_a_process_without_ours():
    """--peers-only --profile: the peer's operators from PyTorch's profiler, and no row of ours (JAX's profiler
    and PyTorch's both take a GPU's CUPTI, so bench_variants.py runs this in a process of its own)."""
    import subprocess

    script = Path(__file__).resolve().parent.parent / "scripts" / "bench_train.py"
    result = subprocess.run([sys.executable, str(script), "--shapes", "quickstart", "--peers", "transformers",
                             "--peers-only", "--profile", "--steps", "1"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert any(line.startswith("# transformers quickstart B=12: ") and line.endswith(" tok/s") for line in lines)
    header = next(line for line in lines if line.startswith("# profile transformers quickstart B=12 / cpu: "))
    busy, wall = (float(x) for x in re.findall(r"([\d.]+) ms (?:busy|wall)", header))
    assert 0 < busy <= 1.1 * wall
    assert any(line.startswith("#  ") and line.endswith("aten::mm") for line in lines)  # the matmuls, by name
    assert not any(line.startswith("| ") for line in lines)  # ours did not run
    no_peer = subprocess.run([sys.executable, str(script), "--peers", "--peers-only"], capture_output=True, text=True)
    assert no_peer.returncode == 2 and "--peers-only needs --peers" in no_peer.stderr


def test_the_train_cli_run_reports_what_its_metrics_logged():
    """The train CLI on random tokens, as bench_train.py --cli-steps and bench_variants.py --memory-configs run it;
    a CPU keeps no count of its memory (a GPU's is checked in tests/test_train.py, through a stand-in count)."""
    from train_cli_run import train_cli_run

    tiny = ["--config.n_layer=1", "--config.n_head=2", "--config.n_embd=32", "--config.block_size=32",
            "--config.batch_size=8", "--config.tokens_per_step=256", "--config.dtype=float32", "--config.num_samples=0"]
    logged, lines = train_cli_run(6, tiny, timeout=240)
    assert logged and logged["tokens_per_sec"] > 0 and logged["peak_memory_gib"] is None, lines
    assert "params | 256 tokens/step = 1 x 8 x 32 | " in lines[0] and lines[-1].startswith("checkpoints in")
    failed, output = train_cli_run(2, ["--config.batch_size=3"] + tiny[5:], timeout=240)
    assert failed is None and "batch_size" in output
