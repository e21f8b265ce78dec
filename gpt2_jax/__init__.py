"""GPT-2 in pure-functional JAX/Flax: the model, HF conversion both ways, sampling and training.

    from gpt2_jax import GPT2Config, GPT2, from_hf, to_hf, generate
"""

import importlib
import sys

# Resolved on first use: importing the package imports none of its modules, so `python -m gpt2_jax.convert`
# runs convert.py before anything else imports it (runpy warns otherwise).
_PUBLIC = {
    "GPT2Config": "gpt2_jax.config",
    "GPT2": "gpt2_jax.model",
    "from_hf": "gpt2_jax.loading",
    "to_hf": "gpt2_jax.loading",
    "generate": "gpt2_jax.sampling",
}
__all__ = list(_PUBLIC)

if sys.argv[:1] == ["-m"]:  # `python -m gpt2_jax.CLI` (Python's argv[0] while it finds the module): a Ctrl-C
    from gpt2_jax.errors import leave_on_ctrl_c_while_starting  # before the CLI's main is one line, not a traceback

    leave_on_ctrl_c_while_starting()


def __getattr__(name):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'gpt2_jax' has no attribute {name!r}")
    return getattr(importlib.import_module(_PUBLIC[name]), name)
