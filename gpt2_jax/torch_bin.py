"""pytorch_model.bin, read without running its code: `torch.load(weights_only=True)`, tensors only.

A .bin is a pickle, which may name any Python callable to run when loaded; torch's weights-only
unpickler refuses those, and this module says so in one line (never torch's own advice, which is
to load it with weights_only=False, running that code).
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np

from gpt2_jax.errors import UserError


class TorchFileError(UserError):
    """A pytorch_model.bin that is unreadable, or holds anything but named tensors."""


def load_bin(bin_file: Path) -> dict[str, np.ndarray]:
    """{name: array} from a torch state dict file (bfloat16 as float32: numpy has no bfloat16)."""
    try:
        import torch
    except ImportError:
        raise TorchFileError(f"{bin_file}: reading .bin needs torch (pip install torch)") from None
    try:
        with warnings.catch_warnings():  # a plain pickle (not torch.save's zip) warns of its protocol, in two lines
            warnings.simplefilter("ignore")
            state_dict = torch.load(bin_file, map_location="cpu", weights_only=True)
    except (FileNotFoundError, PermissionError, IsADirectoryError) as error:  # as for model.safetensors
        raise TorchFileError(f"{bin_file}: cannot read it ({error.strerror})") from None
    except Exception as error:  # torch raises RuntimeError/UnpicklingError/EOFError variants
        text = str(error)  # torch 2.4's "Unsupported global: GLOBAL x.y", 2.6's "unsupported GLOBAL x.y whose module"
        objects = re.search(r"unsupported GLOBAL:? (?:GLOBAL )?(\S+)", text, re.IGNORECASE)
        if objects:
            raise TorchFileError(f"{bin_file}: refused: it holds Python objects, not only tensors "
                                 f"({objects.group(1)}); save it as model.safetensors where it was made") from None
        detail = re.search(r"WeightsUnpickler error:\s*(\S.*)", text)
        lines = [line.strip() for line in text.splitlines() if line.strip() and "weights_only" not in line]
        raise TorchFileError(f"{bin_file}: unreadable checkpoint ({type(error).__name__}: "
                             f"{detail.group(1) if detail else (lines or [''])[0]})") from None
    if not isinstance(state_dict, dict):
        raise TorchFileError(f"{bin_file}: not a state dict of tensors ({type(state_dict).__name__})")
    for key, value in state_dict.items():
        if not isinstance(key, str):  # convert.py matches names as strings
            raise TorchFileError(f"{bin_file}: a key {key!r} is not a parameter name ({type(key).__name__})")
        if not isinstance(value, torch.Tensor):
            raise TorchFileError(f"{bin_file}: {key!r} is not a tensor ({type(value).__name__})")
    return {key: tensor.numpy() if tensor.dtype != torch.bfloat16 else tensor.float().numpy()
            for key, tensor in state_dict.items()}
