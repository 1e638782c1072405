"""Model outputs with the field names transformers uses: attribute, key and index access."""
from __future__ import annotations

from collections import OrderedDict
from typing import Any


class ModelOutput(OrderedDict):
    """Like transformers' ModelOutput: ``out.logits``, ``out["logits"]`` and ``out[0]`` (the first
    field that is not None) all work; fields left as None are absent from keys() and tuples."""

    FIELDS: tuple[str, ...] = ()

    def __init__(self, **kwargs: Any) -> None:
        unknown = set(kwargs) - set(self.FIELDS)
        if unknown:
            raise TypeError(f"{type(self).__name__} has no fields {sorted(unknown)}")
        super().__init__((k, kwargs[k]) for k in self.FIELDS if kwargs.get(k) is not None)

    def __getattr__(self, name: str) -> Any:
        if name in type(self).FIELDS:
            return self.get(name)
        raise AttributeError(f"{type(self).__name__} has no field {name!r}")

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, (int, slice)):
            return self.to_tuple()[key]
        return super().__getitem__(key)

    def to_tuple(self) -> tuple:
        return tuple(self.values())


class BaseModelOutput(ModelOutput):
    FIELDS = ("last_hidden_state", "past_key_values", "hidden_states")


class CausalLMOutput(ModelOutput):
    FIELDS = ("loss", "logits", "past_key_values", "hidden_states")


class SequenceClassifierOutput(ModelOutput):
    FIELDS = ("loss", "logits", "past_key_values", "hidden_states")


class TokenClassifierOutput(ModelOutput):
    FIELDS = ("loss", "logits", "past_key_values", "hidden_states")


class QuestionAnsweringOutput(ModelOutput):
    FIELDS = ("loss", "start_logits", "end_logits", "past_key_values", "hidden_states")
