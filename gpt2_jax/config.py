"""GPT2Config: the model's shape, with transformers' GPT2Config field names and config.json."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from gpt2_jax.errors import UserError

PRESETS = {
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768),  # 124M
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),  # 350M
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280),  # 774M
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600),  # 1558M
}

# Both names mean GELU with the tanh approximation in transformers.
TANH_GELU_NAMES = ("gelu_new", "gelu_pytorch_tanh")

# HF config.json values that change the math in ways this model does not implement.
UNSUPPORTED_HF_SETTINGS = {"add_cross_attention": False, "scale_attn_weights": True,
                           "scale_attn_by_inverse_layer_idx": False, "tie_word_embeddings": True}
SHAPE_FIELDS = ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head")
# transformers' GPT2Config.attribute_map: other names it reads for the shape (a hand-written config.json may use them).
HF_ALIASES = {"hidden_size": "n_embd", "max_position_embeddings": "n_positions", "num_attention_heads": "n_head",
              "num_hidden_layers": "n_layer"}


class ConfigError(UserError):
    """A config.json or config value this model cannot honour."""


@dataclasses.dataclass(frozen=True)
class GPT2Config:
    """GPT-2's shape. Field names and defaults are transformers' GPT2Config (124M)."""

    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int | None = None  # MLP width; None means 4 * n_embd, as in GPT-2
    activation_function: str = "gelu_new"
    layer_norm_epsilon: float = 1e-5  # GPT-2's value; flax's LayerNorm default is 1e-6
    initializer_range: float = 0.02
    bos_token_id: int | None = 50256  # None (null): no such token, as transformers allows
    eos_token_id: int | None = 50256  # sampling stops a row at it; None: never

    def __post_init__(self):
        for name in SHAPE_FIELDS:  # a size past int32: JAX overflows
            if not _is_int(getattr(self, name), 1) or getattr(self, name) >= 2**31:
                raise ConfigError(f"{name}={getattr(self, name)!r} must be a positive integer below 2**31")
        for name in ("bos_token_id", "eos_token_id"):
            if getattr(self, name) is not None and not _is_int(getattr(self, name), 0):
                raise ConfigError(f"{name}={getattr(self, name)!r} must be a token id (an integer >= 0) or null")
        if self.n_inner is not None and not (_is_int(self.n_inner, 1) and self.n_inner < 2**31):
            raise ConfigError(f"n_inner={self.n_inner!r} must be a positive integer below 2**31, or null")
        for name in ("layer_norm_epsilon", "initializer_range"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < float("inf")):
                raise ConfigError(f"{name}={value!r} must be a positive number")
        if self.n_embd % self.n_head:
            raise ConfigError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if self.activation_function not in TANH_GELU_NAMES:
            raise ConfigError(
                f"activation_function={self.activation_function!r} is not supported; "
                f"GPT-2 uses one of {TANH_GELU_NAMES}"
            )

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def mlp_width(self) -> int:
        return self.n_inner or 4 * self.n_embd

    @classmethod
    def preset(cls, name: str, **overrides) -> GPT2Config:
        """One of gpt2, gpt2-medium, gpt2-large, gpt2-xl, with optional field overrides."""
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        unknown = overrides.keys() - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown GPT2Config field(s) {sorted(unknown)}")
        return cls(**{**PRESETS[name], **overrides})

    @classmethod
    def from_dict(cls, values: dict) -> GPT2Config:
        """From a transformers config dict; its other HF fields (dropout, summary_*) are ignored."""
        if not isinstance(values, dict):
            raise ConfigError(f"a config must be a JSON object of GPT-2 fields, not a {type(values).__name__}")
        if values.get("model_type", "gpt2") != "gpt2":
            raise ConfigError(f"model_type={values['model_type']!r} is not gpt2")
        for key, supported in UNSUPPORTED_HF_SETTINGS.items():
            if values.get(key, supported) != supported:
                raise ConfigError(f"{key}={values[key]!r} is not supported (only {supported!r})")
        values = dict(values)
        for alias, name in HF_ALIASES.items():  # transformers takes the alias where both are given: refused here
            if alias in values and values.setdefault(name, values[alias]) != values[alias]:
                raise ConfigError(f"{alias}={values[alias]!r} and {name}={values[name]!r} disagree (one setting)")
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in fields})

    @classmethod
    def from_json(cls, path: str | Path) -> GPT2Config:
        return cls.from_values(read_json(path), path)

    @classmethod
    def from_values(cls, values, path: str | Path) -> GPT2Config:
        """`from_dict` of the values read from the config.json at `path`, which its errors name."""
        try:
            return cls.from_dict(values)
        except ConfigError as error:
            raise ConfigError(f"{path}: {error}{defaults_taken(values, str(error))}") from None

    def to_dict(self) -> dict:
        """A transformers-compatible config dict (GPT2LMHeadModel, tied head)."""
        return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", **dataclasses.asdict(self),
                "tie_word_embeddings": True}

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")


def read_json(path: str | Path):
    """The JSON in the file at `path`; a ConfigError if there is none to read."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except OSError as error:  # unreadable, a directory
        raise ConfigError(f"{path}: cannot read it ({error.strerror or error})") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path}: not valid JSON ({error})") from None


def defaults_taken(values, error: str = "") -> str:
    """' (config.json gives no n_embd: GPT-2 124M's taken)' for the shape's fields a config dict leaves out (as
    transformers, from_dict takes GPT-2 124M's), where the `error` (if given) names one of them; else ''."""
    given = {HF_ALIASES.get(key, key) for key in values} if isinstance(values, dict) else set(SHAPE_FIELDS)
    missing = [key for key in SHAPE_FIELDS if key not in given and (not error or key in error)]
    return f" (config.json gives no {', '.join(missing)}: GPT-2 124M's taken)" if missing else ""


def _is_int(value, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum
