"""Command lines that explain themselves: every --help (but train's) names `python -m gpt2_jax.NAME` and
shows each option's default."""

import argparse
import importlib
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gpt2_jax.cli import HelpFormatter, at_least

COMMANDS = {"sample": "(default: 30)", "convert": "(default: for GPT-2's vocabulary", "prepare": "(default: 0.1)",
            "evaluate": "(default: val_loss,hellaswag)", "report": "--workdir WORKDIR"}

MODULES = {"convert": "convert_cli"}  # convert.py is the key map; its command line sits on the loader


@pytest.mark.parametrize("name", COMMANDS)
def test_help_names_the_command_and_shows_every_default(name, capsys, monkeypatch):
    parsers = []
    original = argparse.ArgumentParser.parse_args
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", lambda self, *args: parsers.append(self) or
                        original(self, *args))
    with pytest.raises(SystemExit) as exited:
        importlib.import_module(f"gpt2_jax.{MODULES.get(name, name)}").main(["--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert exited.value.code == 0 and shown.startswith(f"usage: python -m gpt2_jax.{name} ")
    assert COMMANDS[name] in shown and "STYLE.md" not in shown
    parser = parsers[0]
    either_of = {a for group in parser._mutually_exclusive_groups if group.required for a in group._group_actions}
    optional = [a for a in parser._actions if a.option_strings and a.nargs != 0 and not a.required and a not in either_of]
    assert optional
    for action in optional:  # the formatter's default, or the help's own words where the default is None
        assert "(default: " in HelpFormatter(parser.prog)._get_help_string(action), action.option_strings


def test_a_reader_that_goes_away_ends_the_command_quietly():
    """`python -m gpt2_jax.X ... | head -1`: no BrokenPipeError traceback, exit 141 as a shell's would be."""
    program = ("from gpt2_jax.errors import exit_on_user_error\n"
               "exit_on_user_error(lambda: [print('line', i) for i in range(200_000)])()\n")
    process = subprocess.Popen([sys.executable, "-c", program], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.readline()
    process.stdout.close()  # the reader goes away
    assert process.wait(timeout=60) == 141 and process.stderr.read() == b""


def test_a_count_below_its_minimum_is_refused_by_the_parser(capsys):
    """The benchmark scripts' counts (`--steps 0` once ended in a StatisticsError traceback)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=at_least(1))
    assert parser.parse_args(["--steps", "3"]).steps == 3
    for text, message in (("0", "must be at least 1, got 0"), ("-2", "must be at least 1, got -2"),
                          ("two", "expected an integer, got 'two'")):
        with pytest.raises(SystemExit) as exited:
            parser.parse_args(["--steps", text])
        assert exited.value.code == 2 and f"argument --steps: {message}" in capsys.readouterr().err


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="watches the process's loaded libraries in /proc")
@pytest.mark.parametrize("name", ["train", "sample"])
def test_ctrl_c_while_the_command_imports_is_one_line(name, tmp_path):
    """Before main: once a traceback from inside the imports, or lost in a jaxlib callback (the start went on)."""
    process = subprocess.Popen([sys.executable, "-m", f"gpt2_jax.{name}", "--help"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    started = time.monotonic()
    while "jaxlib" not in Path(f"/proc/{process.pid}/maps").read_text():  # importing JAX: main is seconds away
        assert process.poll() is None and time.monotonic() - started < 60, process.communicate()
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert (process.returncode, stdout, stderr) == (130, "", "interrupted\n")
