"""Command lines that explain themselves: every --help (but train's) names `python -m gpt2_jax.NAME` and
shows each option's default."""

import argparse
import importlib
import os
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


def test_sample_imports_nothing_that_an_hf_model_never_uses():
    # torch and transformers: a .bin is read without them (torch_bin.py); orbax, grain, tensorstore: only for a
    # params directory or workdir (model_dirs.py). Each second of imports is waited for before any --help or error.
    heavy = ("torch", "transformers", "orbax", "grain", "tensorstore", "tensorflow", "optax", "matplotlib")
    program = f"import sys, gpt2_jax.sample; print([m for m in {heavy} if m in sys.modules])"
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


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
    program = ("from gpt2_jax.cli_main import exit_on_user_error\n"
               "exit_on_user_error(lambda: [print('line', i) for i in range(200_000)])()\n")
    process = subprocess.Popen([sys.executable, "-c", program], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.readline()
    process.stdout.close()  # the reader goes away
    assert process.wait(timeout=60) == 141 and process.stderr.read() == b""


@pytest.mark.parametrize("name, module", [("sample", "sample"), ("evaluate", "evaluate"), ("convert", "convert_cli"),
                                          ("prepare", "prepare"), ("report", "report")])
def test_a_command_line_mistake_is_one_line(name, module, capsys):
    """argparse's own answer was the usage (several lines) and then the error; train's (absl's) was one line."""
    with pytest.raises(SystemExit) as exited:
        importlib.import_module(f"gpt2_jax.{module}").main(["--no-such-option"])
    said = capsys.readouterr().err
    assert exited.value.code == 2 and said.count("\n") == 1 and said.startswith(f"{name}: error: "), said
    assert said.endswith(f"; python -m gpt2_jax.{name} --help lists the options\n"), said


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
@pytest.mark.parametrize("command, ignored, signum", [(["-m", "gpt2_jax.train"], False, signal.SIGINT),
                                                      (["-u", "-mgpt2_jax.sample"], False, signal.SIGINT),
                                                      (["-m", "gpt2_jax.sample"], True, signal.SIGINT),
                                                      (["-m", "gpt2_jax.train"], False, signal.SIGTERM)])
def test_ctrl_c_while_the_command_imports_is_one_line(command, ignored, signum):
    """Before main: once a traceback from inside the imports, or lost in a jaxlib callback (the start went on).
    A SIGINT that the command was started ignoring (a script's `cmd &`) stays ignored. SIGTERM (`kill`, `timeout`)
    ended the process without a word (exit -15, no line)."""
    ignoring = ["sh", "-c", 'trap "" INT; exec "$0" "$@"'] if ignored else []  # as a script's `cmd &` starts it
    process = subprocess.Popen([*ignoring, sys.executable, *command, "--help"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    started = time.monotonic()
    while "jaxlib" not in Path(f"/proc/{process.pid}/maps").read_text():  # importing JAX: main is seconds away
        assert process.poll() is None and time.monotonic() - started < 60, process.communicate()
        time.sleep(0.01)
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=60)
    if ignored:
        assert process.returncode == 0 and stdout.startswith("usage: ") and stderr == ""
    else:
        said = "interrupted\n" if signum == signal.SIGINT else "stopped by SIGTERM\n"
        assert (process.returncode, stdout, stderr) == (128 + signum, "", said)


SIGNAL_WHILE_WRITING = """
import os, signal, sys, time
from gpt2_jax.cli_main import exit_on_user_error
from gpt2_jax.interrupt import leave_on_ctrl_c_while_starting

leave_on_ctrl_c_while_starting()  # as `python -m gpt2_jax.NAME` starts

@exit_on_user_error
def main():
    try:
        os.kill(os.getpid(), int(sys.argv[1]))  # `kill PID`, or a terminal closed, while convert writes its output
        time.sleep(10)
    finally:
        print("temporary output removed")

main()
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_in_a_command_is_one_line_after_its_clean_up(signum):
    """sample, evaluate and convert have no SIGTERM or SIGHUP handler of their own: `kill` (or an ssh session that
    dropped) ended them without a word (exit -15, -1), and convert's temporary output directory was left behind.
    Now both stop them as Ctrl-C does."""
    result = subprocess.run([sys.executable, "-c", SIGNAL_WHILE_WRITING, str(int(signum))], capture_output=True,
                            text=True, timeout=60, cwd=Path(__file__).parent.parent)
    assert (result.returncode, result.stdout, result.stderr) == (128 + signum, "temporary output removed\n",
                                                                 f"stopped by {signum.name}\n")


SIGNAL_WHILE_LEAVING = """
import atexit, os, signal, sys, time
from gpt2_jax.cli_main import exit_on_user_error
from gpt2_jax.interrupt import leave_on_ctrl_c_while_starting

leave_on_ctrl_c_while_starting()  # as `python -m gpt2_jax.NAME` starts

@atexit.register
def clean_up():  # as JAX's, at exit: the signal comes while the finished command's process leaves, which hangs
    os.kill(os.getpid(), int(sys.argv[1]))
    time.sleep(60)

@exit_on_user_error
def main():
    print("wrote out_dir")

main()
"""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_stop_signal_while_a_finished_command_exits_changes_nothing(signum):
    """A signal in JAX's atexit clean-up (~0.3 s) was an "Exception ignored in atexit callback" traceback, exit 0;
    a little later, once Python had given the signal its default action back, an exit -2 or -15 without a word.
    It ends the process at once, so an exit that hangs (a multi-process run's shutdown barrier) can be stopped."""
    result = subprocess.run([sys.executable, "-c", SIGNAL_WHILE_LEAVING, str(int(signum))], capture_output=True,
                            text=True, timeout=30, cwd=Path(__file__).parent.parent)
    assert (result.returncode, result.stdout, result.stderr) == (0, "wrote out_dir\n", "")


HANDLERS_AFTER_THE_LAST_EXIT_CALLBACK = """
import atexit, signal, sys
from gpt2_jax.cli_main import exit_on_user_error
from gpt2_jax.errors import UserError

@atexit.register  # registered first, so run last: what Python's shutdown then finds
def handlers_left():
    print(*(signal.getsignal(signum) == signal.SIG_IGN for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)))

from gpt2_jax.interrupt import leave_on_ctrl_c_while_starting
leave_on_ctrl_c_while_starting()  # as `python -m gpt2_jax.NAME` starts

@exit_on_user_error
def main():
    if sys.argv[1] == "fails":
        raise UserError("no")

main()
"""


@pytest.mark.parametrize("outcome, ignored", [("done", "True True True"), ("fails", "False False False")])
def test_a_finished_command_ignores_stop_signals_once_python_shuts_down(outcome, ignored):
    """Python gives each signal it handled its default action back as it shuts down; in JAX's C++ teardown that
    follows (~0.3 s) a signal then killed a finished command (exit 143, 130 or 129, its output whole). A signal
    ignored is left ignored: the last exit callback ignores them (a command that failed keeps its handlers)."""
    result = subprocess.run([sys.executable, "-c", HANDLERS_AFTER_THE_LAST_EXIT_CALLBACK, outcome],
                            capture_output=True, text=True, timeout=60, cwd=Path(__file__).parent.parent)
    assert result.stdout.splitlines()[-1] == ignored, result.stderr


def test_another_program_run_with_python_m_keeps_its_own_ctrl_c(tmp_path):
    """Only gpt2_jax's own commands leave at once: a package of the user's that imports gpt2_jax does not."""
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "__init__.py").write_text("import gpt2_jax\n")
    (tmp_path / "theirs" / "tool.py").write_text("import signal\nprint(signal.getsignal(signal.SIGINT) is "
                                                 "signal.default_int_handler)\n")
    result = subprocess.run([sys.executable, "-m", "theirs.tool"], capture_output=True, text=True, cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})
    assert (result.returncode, result.stdout) == (0, "True\n"), result.stderr


LOSES_A_CTRL_C = """
import gc, signal, time
from gpt2_jax.cli_main import exit_on_user_error

def lose_a_ctrl_c(phase, info):  # as a Ctrl-C arriving in jaxlib's garbage collector callback
    gc.callbacks.remove(lose_a_ctrl_c)
    signal.default_int_handler(signal.SIGINT, None)

@exit_on_user_error
def main():
    gc.callbacks.append(lose_a_ctrl_c)
    gc.collect()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the work that went on
        pass
    print("went on")

main()
"""


def test_a_ctrl_c_lost_in_a_garbage_collector_callback_still_ends_the_command():
    """Python prints a KeyboardInterrupt raised in a gc callback as "Exception ignored" and drops it: a train run
    went on compiling. The command now answers it as any Ctrl-C: one line, exit 130, no traceback."""
    result = subprocess.run([sys.executable, "-c", LOSES_A_CTRL_C], capture_output=True, text=True, timeout=60,
                            cwd=Path(__file__).parent.parent)
    assert (result.returncode, result.stdout, result.stderr) == (130, "", "interrupted\n")


LOSES_A_SECOND_CTRL_C = """
import gc, signal, time
from gpt2_jax.cli_main import exit_on_user_error
from gpt2_jax.interrupt import StopSignals

def lose_a_ctrl_c(phase, info):
    gc.callbacks.remove(lose_a_ctrl_c)
    signal.getsignal(signal.SIGINT)(signal.SIGINT, None)  # the second Ctrl-C, raised in a gc callback

@exit_on_user_error
def main():
    with StopSignals(signal.SIGINT) as signals:
        signal.raise_signal(signal.SIGINT)  # the first: a flag for the work's next check
        gc.callbacks.append(lose_a_ctrl_c)
        gc.collect()
        try:
            if signals.repeated:  # the work's next check (as AgreedStop.poll)
                raise KeyboardInterrupt
        finally:
            time.sleep(0.5)  # finishing the save
            print("saved", flush=True)
    print("went on")

main()
"""


def test_a_second_ctrl_c_lost_under_stop_signals_is_raised_once_and_quietly():
    """Where a train run's StopSignals has Ctrl-C, its next check raises a lost second one: it is not also
    delivered again (once more, it cut short the save after that check), nor printed as "Exception ignored"."""
    result = subprocess.run([sys.executable, "-c", LOSES_A_SECOND_CTRL_C], capture_output=True, text=True,
                            timeout=60, cwd=Path(__file__).parent.parent)
    assert (result.returncode, result.stdout, result.stderr) == (130, "saved\n", "interrupted\n")


ENDS = """
import signal, sys
from gpt2_jax.cli_main import exit_on_user_error
from gpt2_jax.errors import UserError
from gpt2_jax.interrupt import Stopped

@exit_on_user_error
def main():
    print("made")
    if sys.argv[1] == "error":
        raise UserError("bad input")
    if sys.argv[1] == "hangup":
        raise Stopped(signal.SIGHUP, [])  # saved, then stopped by a terminal's hangup

main()
"""


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="/dev/full stands for a terminal gone")
@pytest.mark.parametrize("how, code", [("done", 0), ("error", 2), ("hangup", 128 + signal.SIGHUP)])
def test_the_exit_code_holds_without_a_stdout_or_a_writable_stderr(how, code):
    """Started with stdout closed (`cmd >&-`), a command that did its work ended in a traceback (exit 1); with
    stderr gone (a terminal hung up), a run stopped and saved by SIGHUP exited 1, not 129."""
    closed = subprocess.run(["sh", "-c", 'exec "$0" "$@" >&-', sys.executable, "-c", ENDS, how], capture_output=True,
                            text=True, cwd=Path(__file__).parent.parent)
    assert closed.returncode == code and "Traceback" not in closed.stderr, closed.stderr
    with open("/dev/full", "w") as full:
        gone = subprocess.run([sys.executable, "-c", ENDS, how], stdout=subprocess.PIPE, stderr=full, text=True,
                              cwd=Path(__file__).parent.parent)
    assert (gone.returncode, gone.stdout) == (code, "made\n")
