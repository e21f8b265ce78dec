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

    printed = f"# its metrics.jsonl: median tokens_per_sec {551_704.4:,.0f}, mfu {0.4771:.1%}"  # bench_train's format
    assert "# its metrics.jsonl: median tokens_per_sec {cli_tps:,.0f}, mfu {cli_mfu:.1%}" in (
        Path(bench_variants.__file__).parent / "bench_train.py").read_text()
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
