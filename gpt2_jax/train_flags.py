"""The train command line: --config (a configs/*.py file, with --config.KEY=VALUE overrides) and --workdir.

Used by `python -m gpt2_jax.train` and by the scripts that read a config as training does.
"""

from __future__ import annotations

import logging
import re
import sys

import ml_collections
from absl import flags
from ml_collections import config_flags

from gpt2_jax import train_config
from gpt2_jax.errors import UserError

config_flags.DEFINE_config_file("config", None, "a configs/*.py file", lock_config=True)
flags.DEFINE_string("workdir", None, "directory for checkpoints, metrics and the run's config")


class _NotAConfigDict(Exception):
    """Raised while absl parses the flags (which would rewrap a ValueError in a message of its own)."""


def _config_dicts_only(load):
    """config_flags' loader of the --config file, refusing a get_config() that returns no ConfigDict as soon as
    it is read: config_flags warns of a None (an absl WARNING line), then applies the --config.KEY overrides to
    whatever it got, and fails there (a KeyError that names no file)."""

    def loaded(path: str):
        absl_logger = logging.getLogger("absl")
        absl_logger.addFilter(_not_returned_none)
        try:
            config = load(path)
        finally:
            absl_logger.removeFilter(_not_returned_none)
        if not isinstance(config, ml_collections.ConfigDict):
            hasattr(config, "keys")  # not dead: config_flags' stand-in for a file it could not read raises its OSError
            kind = type(config).__name__
            returned = "None" if config is None else f"{'an' if kind[0] in 'aeiou' else 'a'} {kind}"
            raise _NotAConfigDict(f"cannot load --config: get_config() returned {returned}, not an ml_collections."
                                  f"ConfigDict; make {path} return train_config.default_config() with its changes")
        # Before the overrides (--config.KEY of a key it lacks: an AttributeError); a typo was kept and ignored
        known = train_config.default_config().keys()
        unknown, missing = sorted(set(config.keys()) - set(known)), sorted(set(known) - set(config.keys()))
        if unknown or missing:
            said = [f"unknown key(s) {', '.join(unknown)}" if unknown else "",
                    f"no {', '.join(missing)}" if missing else ""]
            raise _NotAConfigDict(f"cannot use --config {path}: its config has {' and '.join(filter(None, said))}; "
                                  "build it on train_config.default_config() (python -m gpt2_jax.train --help lists "
                                  "the keys)")
        return config

    return loaded


def _not_returned_none(record: logging.LogRecord) -> bool:
    return "get_config() returned None" not in record.getMessage()


flags.FLAGS["config"].parser.parse = _config_dicts_only(flags.FLAGS["config"].parser.parse)


def parse_flags(argv: list[str], help_text: str = ""):
    """(config, workdir) from the command line, every mistake a UserError naming the flag; --help prints
    `help_text` and the config keys."""
    if {"-h", "--help"} & set(argv):
        print(f"{help_text}\nflags:\n  --config=FILE    a config file, configs/*.py (required)\n  --workdir=DIR    "
              f"where the run writes, and resumes from (required)\n\nconfig keys (default, meaning):\n"
              f"{train_config.describe()}")
        sys.exit(0)
    known = train_config.default_config().keys()
    for arg in argv[1:]:
        key = arg.removeprefix("--config.").split("=")[0]
        if arg.startswith("--config.") and key not in known:
            raise UserError(f"unknown config key {key!r} in {arg}; python -m gpt2_jax.train --help lists them")
    if not _config_path(argv) and any(arg.startswith("--config.") for arg in argv):
        raise UserError("--config.KEY=VALUE overrides a config file's key: give the file too, --config=configs/NAME.py")
    argv, platform_decides = _platform_choices(argv)
    for name in ("config", "workdir"):  # an earlier call's, as in a new process; the program's own flags are kept
        flags.FLAGS[name].unparse()
    for name in [name for name in flags.FLAGS if name.startswith("config.")]:  # and its --config.KEY overrides
        delattr(flags.FLAGS, name)
    program_argv, sys.argv = sys.argv, list(argv)  # config_flags reads --config.KEY from sys.argv, not from argv
    try:
        rest = flags.FLAGS(argv)
        config, workdir = flags.FLAGS.config, flags.FLAGS.workdir
    except flags.Error as error:  # config_flags folds a config file's traceback into it: keep its last line
        head, _, trace = str(error).partition("Traceback (most recent call last):")
        raise UserError(head.strip() + (" " + trace.strip().splitlines()[-1] if trace.strip() else "")) from None
    except _NotAConfigDict as error:
        raise UserError(str(error)) from None
    except OSError as error:  # config_flags reports a config file it cannot load this way, the reason as its cause
        raise UserError(f"cannot load --config: {unloadable_file(error.__cause__ or error)}") from None
    except Exception as error:  # a config file is Python: whatever it raises is the user's to fix, in one line
        if isinstance(error, AttributeError) and "get_config" in str(error):
            raise UserError("cannot load --config: the file defines no get_config()") from None
        path = _config_path(argv)
        python = not path or path.partition(":")[0].endswith(".py")  # FILE.py:ARG passes ARG to get_config
        hint = "" if python else f" ({path} is not a .py file: a config is Python, configs/NAME.py)"
        raise UserError(f"cannot load --config: {type(error).__name__}: {error}{hint}") from None
    finally:
        sys.argv = program_argv
    if len(rest) > 1 or config is None or not workdir:  # --workdir= would train into the current directory
        raise UserError("usage: python -m gpt2_jax.train --config=configs/NAME.py --workdir=DIR [--config.KEY=VALUE]")
    for key in platform_decides:
        config[key] = None
    return config, workdir


def _platform_choices(argv: list[str]) -> tuple[list[str], set[str]]:
    """argv without --config.KEY=None for the keys whose default None lets the platform decide (absl types them as
    bools, which have no None), and the keys whose last value is None: a config file's True or False can be handed
    back to the platform."""
    undecided = {key for key, default, _ in train_config.FIELDS if default is None}
    kept, last = [], {}
    for arg in argv:  # absl's forms: --config.KEY, --config.KEY=VALUE, --noconfig.KEY, each with one dash or two
        flag = re.fullmatch(r"--?(no)?config\.(\w+)(=(.*))?", arg)
        if not (flag and flag[2] in undecided):
            kept.append(arg)
            continue
        value = "false" if flag[1] else (flag[4] if flag[3] else "true").lower()
        if value not in ("none", *BOOL_WORDS):
            raise UserError(f"{arg}: {flag[2]} is True, False or None (the platform decides; the default)")
        last[flag[2]] = value  # absl takes a flag's last value
        if value != "none":
            kept.append(arg)
    return kept, {key for key, value in last.items() if value == "none"}


BOOL_WORDS = ("true", "t", "1", "false", "f", "0")  # absl's, any case


def _config_path(argv: list[str]) -> str:
    """The --config file as given (--config=FILE, --config FILE, or absl's one-dash forms)."""
    for arg, following in zip(argv, argv[1:] + [""]):
        if arg.startswith(("--config=", "-config=")):
            return arg.partition("=")[2]
        if arg in ("--config", "-config"):
            return following
    return ""


def unloadable_file(error: OSError) -> str:
    """Why config_flags could not load the --config file, in one line."""
    if isinstance(error, IsADirectoryError):
        return f"{error.filename} is a directory, not a config file (configs/NAME.py)"
    return str(error).splitlines()[-1].strip()
