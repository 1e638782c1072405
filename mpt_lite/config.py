"""MptConfig: the arguments of transformers' MptConfig, with the same defaults, plus the
llm-foundry fields that real MPT-family checkpoints carry."""
from __future__ import annotations

import copy
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

CONFIG_NAME = "config.json"
logger = logging.getLogger(__name__)


class MissingKeyError(KeyError):
    """A KeyError (missing or unexpected fields, tensors or codes) whose str() is its message,
    not the repr() a plain KeyError gives."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""

ATTN_DEFAULTS: dict[str, Any] = {
    "attn_type": "multihead_attention",
    "attn_pdrop": 0,
    "attn_impl": "torch",
    "clip_qkv": None,
    "qk_ln": False,
    "softmax_scale": None,
    "prefix_lm": False,
    "attn_uses_sequence_id": False,
    "alibi": True,
    "alibi_bias_max": 8,
    "kv_n_heads": None,
}
ATTN_TYPES = ("multihead_attention", "multiquery_attention", "grouped_query_attention")
NORM_TYPES = ("layernorm", "low_precision_layernorm", "rmsnorm", "low_precision_rmsnorm")

# name -> default, in the order of transformers' MptConfig signature
DEFAULTS: dict[str, Any] = {
    "d_model": 2048,
    "n_heads": 16,
    "n_layers": 24,
    "expansion_ratio": 4,
    "max_seq_len": 2048,
    "vocab_size": 50368,
    "resid_pdrop": 0.0,
    "layer_norm_epsilon": 1e-5,
    "emb_pdrop": 0.0,
    "learned_pos_emb": True,
    "attn_config": None,
    "init_device": "cpu",
    "logit_scale": None,
    "no_bias": True,
    "verbose": 0,
    "embedding_fraction": 1.0,
    "norm_type": "low_precision_layernorm",
    "use_cache": False,
    "initializer_range": 0.02,
    "tie_word_embeddings": True,
    "pad_token_id": None,
    "bos_token_id": None,
    "eos_token_id": None,
}
REQUIRED_IN_FILE = ("d_model", "n_heads", "n_layers", "vocab_size")
ALIASES = {"hidden_size": "d_model", "num_attention_heads": "n_heads", "num_hidden_layers": "n_layers"}


class AttnConfig(dict):
    """attn_config: a dict with attribute access (``config.attn_config.alibi`` and ``["alibi"]``)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError as err:
            raise AttributeError(f"attn_config has no field {name!r}") from err

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def to_dict(self) -> dict:
        return dict(self)


class MptConfig:
    """Configuration of an MPT model.

    Accepts every argument of ``transformers.MptConfig`` with the same defaults (``verbose`` is
    accepted and ignored), the aliases ``hidden_size``, ``num_attention_heads`` and
    ``num_hidden_layers``, ``num_labels``/``id2label``/``label2id``, and keeps any other field of
    a hub config.json (``auto_map``, ``init_config``, ``tokenizer_name`` ...) for ``to_dict``.
    """

    model_type = "mpt"

    def __init__(self, d_model: int = 2048, n_heads: int = 16, n_layers: int = 24, expansion_ratio: int = 4,
                 max_seq_len: int = 2048, vocab_size: int = 50368, resid_pdrop: float = 0.0,
                 layer_norm_epsilon: float = 1e-5, emb_pdrop: float = 0.0, learned_pos_emb: bool = True,
                 attn_config: dict | None = None, init_device: str = "cpu", logit_scale: float | str | None = None,
                 no_bias: bool = True, verbose: int = 0, embedding_fraction: float = 1.0,
                 norm_type: str = "low_precision_layernorm", use_cache: bool = False,
                 initializer_range: float = 0.02, **kwargs: Any) -> None:
        named = {name: value for name, value in locals().items() if name in DEFAULTS}  # the parameters above
        for alias, name in ALIASES.items():
            if alias in kwargs:
                value = kwargs.pop(alias)
                # a named argument left at its default was not given: the alias sets it
                if named[name] != DEFAULTS[name] and named[name] != value:
                    raise ValueError(f"both {alias}={value!r} and {name}={named[name]!r} were given")
                named[name] = value
        kwargs = {**named, **kwargs}
        for name, default in DEFAULTS.items():
            setattr(self, name, copy.deepcopy(kwargs.pop(name, default)))
        self.attn_config = self._make_attn_config(self.attn_config)

        id2label = kwargs.pop("id2label", None)
        label2id = kwargs.pop("label2id", None)
        num_labels = kwargs.pop("num_labels", None)
        if num_labels is not None and (id2label is None or int(num_labels) != len(id2label)):
            if id2label is not None:  # as transformers: num_labels wins, and says so
                logger.warning("num_labels=%s replaces the %d labels of id2label", num_labels, len(id2label))
            id2label, label2id = {i: f"LABEL_{i}" for i in range(int(num_labels))}, None
        elif id2label is not None:
            id2label = {int(k): v for k, v in dict(id2label).items()}
        else:
            id2label = {0: "LABEL_0", 1: "LABEL_1"}
        self.id2label = id2label
        self.label2id = dict(label2id) if label2id is not None else {v: k for k, v in id2label.items()}
        self.problem_type = kwargs.pop("problem_type", None)
        kwargs.pop("model_type", None)
        # Anything else (architectures, auto_map, init_config, ffn_config, torch_dtype ...) is kept.
        for name, value in kwargs.items():
            setattr(self, name, value)
        self.validate()

    # ---- aliases ----
    hidden_size = property(lambda self: self.d_model, lambda self, v: setattr(self, "d_model", v))
    num_attention_heads = property(lambda self: self.n_heads, lambda self, v: setattr(self, "n_heads", v))
    num_hidden_layers = property(lambda self: self.n_layers, lambda self, v: setattr(self, "n_layers", v))

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @num_labels.setter
    def num_labels(self, n: int) -> None:
        self.id2label = {i: f"LABEL_{i}" for i in range(int(n))}
        self.label2id = {v: k for k, v in self.id2label.items()}

    @staticmethod
    def _make_attn_config(value: Any) -> AttnConfig:
        if value is None:
            given: dict = {}
        elif isinstance(value, dict):
            given = dict(value)
        elif hasattr(value, "to_dict"):
            given = dict(value.to_dict())
        else:
            raise TypeError(f"attn_config must be a dict or a config object, not {type(value).__name__}")
        cfg = AttnConfig(copy.deepcopy(ATTN_DEFAULTS))
        cfg.update({k: v for k, v in given.items() if k in ATTN_DEFAULTS or not _is_hf_noise(k)})
        return cfg

    # ---- derived values the model uses ----
    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kv_n_heads(self) -> int:
        kind = self.attn_config["attn_type"]
        if kind == "multihead_attention":
            return self.n_heads
        if kind == "multiquery_attention":
            return 1
        kv = self.attn_config.get("kv_n_heads")
        return self.n_heads if kv is None else int(kv)

    @property
    def ffn_hidden_size(self) -> int:
        ffn = getattr(self, "ffn_config", None) or {}
        if ffn.get("ffn_hidden_size") is not None:
            return int(ffn["ffn_hidden_size"])
        return int(self.d_model * self.expansion_ratio)

    @property
    def softmax_scale(self) -> float:
        s = self.attn_config["softmax_scale"]
        return 1.0 / math.sqrt(self.head_dim) if s is None else float(s)

    @property
    def logit_scale_value(self) -> float | None:
        if self.logit_scale is None:
            return None
        if self.logit_scale == "inv_sqrt_d_model":
            return 1.0 / math.sqrt(self.d_model)
        return float(self.logit_scale)

    @property
    def uses_wpe(self) -> bool:
        # llm-foundry builds transformer.wpe only when ALiBi is off (mpt-7b says learned_pos_emb: true).
        return bool(self.learned_pos_emb) and not self.attn_config["alibi"]

    # ---- checks ----
    def validate(self) -> None:
        """Raise ValueError naming the first field that is missing or makes no sense."""
        for name in ("d_model", "n_heads", "n_layers", "max_seq_len", "vocab_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"config field {name} must be an integer, got {value!r}")
            if value <= 0:
                raise ValueError(f"config field {name} must be positive, got {value}")
        if self.d_model % self.n_heads:
            raise ValueError(f"config field d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if not isinstance(self.expansion_ratio, (int, float)) or self.expansion_ratio <= 0:
            raise ValueError(f"config field expansion_ratio must be a positive number, got {self.expansion_ratio!r}")
        if self.ffn_hidden_size <= 0:
            raise ValueError(f"config field expansion_ratio={self.expansion_ratio} gives an empty MLP")
        if not isinstance(self.layer_norm_epsilon, (int, float)) or self.layer_norm_epsilon < 0:
            raise ValueError(f"config field layer_norm_epsilon must be >= 0, got {self.layer_norm_epsilon!r}")
        for name in ("resid_pdrop", "emb_pdrop"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ValueError(f"config field {name} must be a probability, got {value!r}")
        if self.norm_type not in NORM_TYPES:
            raise ValueError(f"config field norm_type={self.norm_type!r} is not supported (one of {NORM_TYPES})")
        if self.logit_scale is not None and self.logit_scale != "inv_sqrt_d_model":
            if isinstance(self.logit_scale, str) or not isinstance(self.logit_scale, (int, float)):
                raise ValueError(
                    f"config field logit_scale must be a number or 'inv_sqrt_d_model', got {self.logit_scale!r}"
                )
        for name in ("pad_token_id", "bos_token_id"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ValueError(f"config field {name} must be a non-negative integer or null, got {value!r}")
        a = self.attn_config
        if a["attn_type"] not in ATTN_TYPES:
            raise ValueError(f"config field attn_config.attn_type={a['attn_type']!r} is not one of {ATTN_TYPES}")
        kv = self.kv_n_heads
        if kv <= 0 or self.n_heads % kv:
            raise ValueError(f"config field attn_config.kv_n_heads={kv} must divide n_heads={self.n_heads}")
        if a["clip_qkv"] is not None and (not isinstance(a["clip_qkv"], (int, float)) or a["clip_qkv"] <= 0):
            raise ValueError(f"config field attn_config.clip_qkv must be a positive number, got {a['clip_qkv']!r}")
        if a["softmax_scale"] is not None and not isinstance(a["softmax_scale"], (int, float)):
            raise ValueError(f"config field attn_config.softmax_scale must be a number, got {a['softmax_scale']!r}")
        if not isinstance(a["alibi_bias_max"], (int, float)) or a["alibi_bias_max"] <= 0:
            raise ValueError(
                f"config field attn_config.alibi_bias_max must be positive, got {a['alibi_bias_max']!r}"
            )

    def unsupported_features(self) -> list[str]:
        """Fields of llm-foundry that change the math in ways mpt_lite does not compute."""
        a = self.attn_config
        out = []
        if a.get("prefix_lm"):
            out.append("attn_config.prefix_lm=true (bidirectional attention over a prefix mask)")
        if a.get("rope"):
            out.append("attn_config.rope=true (rotary embeddings)")
        if a.get("qk_gn"):
            out.append("attn_config.qk_gn=true (per-head q/k normalisation)")
        if a.get("fused_qkv") is False:
            out.append("attn_config.fused_qkv=false (separate Wq/Wk/Wv)")
        sw = a.get("sliding_window_size", -1)
        if sw not in (None, -1):
            out.append(f"attn_config.sliding_window_size={sw}")
        ffn = getattr(self, "ffn_config", None) or {}
        if ffn.get("ffn_type", "mptmlp") not in ("mptmlp", "mpt_mlp"):
            out.append(f"ffn_config.ffn_type={ffn['ffn_type']!r}")
        act = (ffn.get("ffn_act_fn") or {}).get("name", "gelu")
        if act != "gelu" or (ffn.get("ffn_act_fn") or {}).get("approximate", "none") != "none":
            out.append(f"ffn_config.ffn_act_fn={ffn['ffn_act_fn']!r}")
        if getattr(self, "block_overrides", None):
            out.append("block_overrides")
        return out

    # ---- (de)serialisation ----
    def to_dict(self) -> dict:
        out: dict[str, Any] = {}
        for name in DEFAULTS:
            out[name] = copy.deepcopy(getattr(self, name))
        out["attn_config"] = {k: v for k, v in self.attn_config.items() if k != "kv_n_heads" or v is not None}
        out["id2label"] = dict(self.id2label)  # int keys, as transformers' to_dict (JSON makes them strings)
        out["label2id"] = dict(self.label2id)
        if self.problem_type is not None:
            out["problem_type"] = self.problem_type
        for name, value in vars(self).items():
            if name not in out and not name.startswith("_"):
                out[name] = copy.deepcopy(value)
        out["model_type"] = self.model_type
        return out

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        path = check_save_folder(save_directory, (CONFIG_NAME,))
        path.mkdir(parents=True, exist_ok=True)
        (path / CONFIG_NAME).write_text(self.to_json_string())

    @classmethod
    def from_dict(cls, data: dict, **overrides: Any) -> "MptConfig":
        if not isinstance(data, dict):
            raise ValueError(f"a config must be a JSON object, got {type(data).__name__}")
        merged = dict(data)
        attn_over = overrides.pop("attn_config", None)
        for alias, name in ALIASES.items():  # an override by either name replaces the file's field by either
            if alias in overrides or name in overrides:
                merged.pop(alias, None)
                merged.pop(name, None)
        labels = merged.get("id2label")
        if "num_labels" in overrides and "id2label" not in overrides and labels is not None \
                and len(labels) != int(overrides["num_labels"]):  # the file's labels give way to a new count
            merged.pop("id2label")
            merged.pop("label2id", None)
        merged.update(overrides)
        if attn_over is not None:
            base = dict(merged.get("attn_config") or {})
            base.update(dict(attn_over))
            merged["attn_config"] = base
        return cls(**merged)

    @classmethod
    def from_json_file(cls, path: str | os.PathLike, **overrides: Any) -> "MptConfig":
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError as err:
            raise FileNotFoundError(f"no config.json at {path}") from err
        except UnicodeDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: not UTF-8 text ({e})") from e
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from e
        if not isinstance(data, dict):
            raise ValueError(f"{path} must hold a JSON object")
        # A checkpoint's config must describe its architecture: defaults would silently mis-shape it.
        missing = [name for name in REQUIRED_IN_FILE
                   if name not in data and not any(a in data for a, n in ALIASES.items() if n == name)]
        if missing:
            raise MissingKeyError(f"{path} is missing required field(s): {', '.join(missing)}")
        mt = data.get("model_type")
        if mt not in (None, "mpt", "replit_lm"):
            raise ValueError(f"{path} describes a {mt!r} model, not an MPT model")
        try:
            return cls.from_dict(data, **overrides)
        except (ValueError, TypeError) as e:
            raise type(e)(f"{path}: {e}") from e

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, **overrides: Any) -> "MptConfig":
        from .hub.checkpoint import resolve_checkpoint

        folder = resolve_checkpoint(name_or_path, config_only=True)
        return cls.from_json_file(folder / CONFIG_NAME, **overrides)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MptConfig) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"MptConfig {self.to_json_string()}"


def holds_mpt_config(folder: Path) -> bool:
    """Whether folder/config.json reads as an MPT model's config (one saved earlier, which a new save may replace)."""
    try:
        data = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and (data.get("model_type") in ("mpt", "replit_lm")
                                       or ("model_type" not in data and "d_model" in data))


def check_save_folder(save_directory: Any, names: tuple[str, ...]) -> Path:
    """The folder a save may write `names` into: a path (not empty, not a file) where none of those
    files exists unless the folder holds an MPT checkpoint already (a save replaces its own kind of
    files, never a user's unrelated config.json or weights)."""
    if isinstance(save_directory, bool) or not isinstance(save_directory, (str, os.PathLike)):
        raise TypeError(f"save_directory must be a path (str or os.PathLike), got {type(save_directory).__name__}")
    if not os.fspath(save_directory):
        raise ValueError("save_directory is empty; name the folder to write (\".\" for the current one)")
    path = Path(save_directory)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{path} exists and is not a folder")
    present = [n for n in names if (path / n).exists()]
    if present and not holds_mpt_config(path):
        raise FileExistsError(f"{path} already holds {', '.join(present)}, which are not an MPT checkpoint's files; "
                              "save into a new or empty folder (or remove them)")
    return path


def _is_hf_noise(key: str) -> bool:
    # transformers serialises its sub-config machinery into attn_config; none of it means anything here.
    return key in {
        "_name_or_path", "architectures", "chunk_size_feed_forward", "dtype", "id2label", "label2id",
        "is_encoder_decoder", "model_type", "output_attentions", "output_hidden_states",
        "problem_type", "return_dict", "torch_dtype", "transformers_version",
    }
