"""What every `python -m gpt2_jax.NAME` command line shares (but train's, which is absl's): a --help
that names the command as it is run, keeps its module docstring as written and shows each default."""

from __future__ import annotations

import argparse
from pathlib import Path


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The description as written, and `(default: X)` after each option that has a default. Required
    options and flags have none, and an option that defaults to None says in its help what happens."""

    def _get_help_string(self, action):
        if action.required or action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


class OneLineErrors(argparse.ArgumentParser):
    """A mistake on the command line is one line, as every other error of these commands (and train's) is:
    `sample: error: argument --top-k: ...; python -m gpt2_jax.sample --help lists the options`."""

    def error(self, message: str):
        self.exit(2, f"{command_name(self.prog)}: error: {message}; {self.prog} --help lists the options\n")


def command_name(prog: str) -> str:
    """`sample` of `python -m gpt2_jax.sample`, `plot` of `python scripts/plot.py`."""
    return Path(prog.split()[-1]).name.removesuffix(".py").split(".")[-1]


def argument_parser(name: str, doc: str | None) -> argparse.ArgumentParser:
    """The parser of `python -m gpt2_jax.{name}`, described by its module docstring `doc`."""
    return OneLineErrors(prog=f"python -m gpt2_jax.{name}", description=doc, formatter_class=HelpFormatter)


def at_least(minimum: int):
    """An argparse `type`: an integer >= `minimum` ("--steps 0" is refused with what it must be)."""
    def integer(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return integer
