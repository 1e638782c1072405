"""MptTokenizer: a thin wrapper over a `tokenizers` tokenizer.json and its tokenizer_config.json."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Sequence

import torch

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


class MptTokenizer:
    def __init__(self, tokenizer: Any, config: dict | None = None, folder: Path | None = None) -> None:
        self._tok = tokenizer
        self.config = dict(config or {})
        self._folder = folder
        self.bos_token = _token_str(self.config.get("bos_token"))
        self.eos_token = _token_str(self.config.get("eos_token"))
        self.pad_token = _token_str(self.config.get("pad_token"))
        self.unk_token = _token_str(self.config.get("unk_token"))
        self.chat_template = self.config.get("chat_template")

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> "MptTokenizer":
        from tokenizers import Tokenizer

        folder = Path(folder)
        path = folder / "tokenizer.json"
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as e:
            raise OSError(f"cannot read tokenizer {path}: {e}") from None
        config: dict = {}
        for name in ("special_tokens_map.json", "tokenizer_config.json"):
            f = folder / name
            if f.is_file():
                try:
                    config.update(json.loads(f.read_text()))
                except json.JSONDecodeError as e:
                    raise OSError(f"{f} is not valid JSON: {e}") from None
        return cls(tok, config, folder)

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self._tok.save(str(folder / "tokenizer.json"))
        (folder / "tokenizer_config.json").write_text(json.dumps(self.config, indent=2) + "\n")

    # ---- ids of special tokens ----
    def token_to_id(self, token: str | None) -> int | None:
        return None if token is None else self._tok.token_to_id(token)

    @property
    def eos_token_id(self) -> int | None:
        return self.token_to_id(self.eos_token)

    @property
    def bos_token_id(self) -> int | None:
        return self.token_to_id(self.bos_token)

    @property
    def pad_token_id(self) -> int | None:
        return self.token_to_id(self.pad_token)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def __len__(self) -> int:
        return self.vocab_size

    # ---- encode / decode ----
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"expected a string, got {type(text).__name__}")
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Sequence[int] | torch.Tensor, skip_special_tokens: bool = True) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def __call__(self, texts: str | Sequence[str], padding_side: str = "left",
                 add_special_tokens: bool = True) -> dict[str, torch.Tensor]:
        """Batch encode to input_ids and attention_mask tensors, padded (left by default, for generation)."""
        if isinstance(texts, str):
            texts = [texts]
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        rows = [self.encode(t, add_special_tokens) for t in texts]
        width = max(len(r) for r in rows) if rows else 0
        pad = self.pad_token_id if self.pad_token_id is not None else (self.eos_token_id or 0)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            if not r:
                continue
            sl = slice(width - len(r), width) if padding_side == "left" else slice(0, len(r))
            ids[i, sl] = torch.tensor(r, dtype=torch.long)
            mask[i, sl] = 1
        return {"input_ids": ids, "attention_mask": mask}


def _token_str(value: Any) -> str | None:
    if isinstance(value, dict):  # {"content": "<|endoftext|>", ...} as transformers writes it
        return value.get("content")
    return value
