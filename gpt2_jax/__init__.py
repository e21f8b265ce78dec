"""GPT-2 in pure-functional JAX/Flax: the model, HF conversion both ways, sampling and training.

    from gpt2_jax import GPT2Config, GPT2, from_hf, to_hf, generate
"""

import importlib
import sys

# Resolved on first use: importing the package imports none of its modules (but interrupt.py under `python -m`),
# so `python -m gpt2_jax.convert` runs convert.py before anything else imports it (runpy warns otherwise).
_PUBLIC = {
    "GPT2Config": "gpt2_jax.config",
    "GPT2": "gpt2_jax.model",
    "from_hf": "gpt2_jax.loading",
    "to_hf": "gpt2_jax.loading",
    "generate": "gpt2_jax.sampling",
}
__all__ = list(_PUBLIC)



def _starting_a_gpt2_jax_command() -> bool:
    """Whether this import is `python -m gpt2_jax.NAME` starting: while Python finds the module, argv[0] is "-m",
    and the module's name is the word of the original command line just before the arguments that argv holds
    ("-mNAME" when written as one word)."""
    if sys.argv[:1] != ["-m"] or len(sys.orig_argv) <= len(sys.argv):
        return False
    return sys.orig_argv[-len(sys.argv)].removeprefix("-m").startswith("gpt2_jax.")


if _starting_a_gpt2_jax_command():  # a Ctrl-C before the command's main is one line, not a traceback
    from gpt2_jax.interrupt import leave_on_ctrl_c_while_starting

    leave_on_ctrl_c_while_starting()


def __getattr__(name):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'gpt2_jax' has no attribute {name!r}")
    return getattr(importlib.import_module(_PUBLIC[name]), name)
