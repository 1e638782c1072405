"""MptTokenizer: a thin wrapper over a `tokenizers` tokenizer.json and its tokenizer_config.json."""
from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path
from typing import Any, Sequence

import torch

from .checks import check_text

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token", "additional_special_tokens")


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
        self._plain: Any = None  # a copy that reads special-token text as text (encode_text)
        self._plain_lock = threading.Lock()

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> "MptTokenizer":
        from tokenizers import Tokenizer

        folder = Path(folder)
        path = folder / "tokenizer.json"
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as e:
            raise OSError(f"cannot read tokenizer {path}: {e}") from e
        config: dict = {}
        for name in ("special_tokens_map.json", "tokenizer_config.json"):
            f = folder / name
            if f.is_file():
                try:
                    data = json.loads(f.read_text(encoding="utf-8"))
                except ValueError as e:  # bad JSON, or not UTF-8 text
                    raise OSError(f"{f} is not valid JSON: {e}") from e
                if not isinstance(data, dict):
                    raise OSError(f"{f} must hold a JSON object, got {type(data).__name__}")
                config.update(data)
        return cls(tok, config, folder)

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self._tok.save(str(folder / "tokenizer.json"))
        (folder / "tokenizer_config.json").write_text(json.dumps(self.config, indent=2) + "\n")
        special = {k: self.config[k] for k in SPECIAL_TOKEN_KEYS if self.config.get(k) is not None}
        (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")

    # ---- ids of special tokens ----
    def token_to_id(self, token: str | None) -> int | None:
        return None if token is None else self._tok.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self._tok.id_to_token(int(token_id))

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
    def unk_token_id(self) -> int | None:
        return self.token_to_id(self.unk_token)

    @property
    def additional_special_tokens(self) -> list[str]:
        extra = self.config.get("additional_special_tokens") or []
        return [t for t in (_token_str(x) for x in extra) if t]

    @property
    def all_special_tokens(self) -> list[str]:
        named = [self.bos_token, self.eos_token, self.unk_token, self.pad_token, *self.additional_special_tokens]
        added = [t.content for t in self._tok.get_added_tokens_decoder().values() if t.special]
        return list(dict.fromkeys(t for t in named + added if t))

    @property
    def all_special_ids(self) -> list[int]:
        ids = (self.token_to_id(t) for t in self.all_special_tokens)
        return [i for i in ids if i is not None]

    @property
    def vocab_size(self) -> int:
        """Tokens the tokenizer knows, added tokens included (a model may have more embedding rows)."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    def __len__(self) -> int:
        return self.vocab_size

    def to_json(self) -> str:
        """The tokenizer.json text (grammar libraries build their token tables from it)."""
        return self._tok.to_str()

    # ---- encode / decode ----
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of text; special-token text in it (``<|endoftext|>``) becomes that special token,
        as in transformers. Text from an untrusted source goes through encode_text instead."""
        check_text(text)
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_text(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of text read as plain text: ``<|im_end|>`` written in it is the characters
        ``<|im_end|>``, never the special token (add_special_tokens still adds what the
        tokenizer's post-processor adds, a BOS for instance)."""
        check_text(text)
        return self._plain_tokenizer().encode(text, add_special_tokens=add_special_tokens).ids

    def _plain_tokenizer(self) -> Any:
        # `tokenizers` matches special tokens even with add_special_tokens=False; its
        # encode_special_tokens setting turns that off, on a copy so that encode() keeps matching.
        with self._plain_lock:
            if self._plain is None:
                from tokenizers import Tokenizer

                plain = Tokenizer.from_str(self._tok.to_str())
                plain.encode_special_tokens = True
                self._plain = plain
            return self._plain

    def decode(self, ids: Sequence[int] | torch.Tensor, skip_special_tokens: bool = True) -> str:
        """Text of a sequence of ids. Ids of embedding rows beyond the tokenizer (a padded vocab:
        50432 rows for 50277 tokens) have no text and are skipped, as `tokenizers` does."""
        return self._tok.decode(_check_ids(ids), skip_special_tokens=skip_special_tokens)

    def batch_decode(self, sequences: Sequence[Sequence[int]] | torch.Tensor,
                     skip_special_tokens: bool = True) -> list[str]:
        if isinstance(sequences, torch.Tensor):
            if sequences.dim() != 2:
                raise ValueError(f"batch_decode takes a 2-D tensor of ids, got shape {tuple(sequences.shape)}")
            sequences = sequences.tolist()
        return [self.decode(s, skip_special_tokens) for s in sequences]

    def apply_chat_template(self, messages: Sequence[dict], add_generation_prompt: bool = True,
                            tokenize: bool = False, chat_template: str | None = None, **extra: Any):
        """The prompt of a conversation (ChatML for MPT chat models), as text or token ids. As ids,
        only the template's own markers are special tokens: special-token text inside a message
        stays text."""
        if tokenize:
            from .chat_encode import encode_chat

            return encode_chat(self, messages, add_generation_prompt=add_generation_prompt,
                               chat_template=chat_template, **extra)
        from .chat_template import render_chat

        return render_chat(self, messages, add_generation_prompt=add_generation_prompt,
                           chat_template=chat_template, **extra)

    def __call__(self, texts: str | Sequence[str], padding_side: str = "left",
                 add_special_tokens: bool = True) -> dict[str, torch.Tensor]:
        """Batch encode to input_ids and attention_mask tensors, padded (left by default, for generation)."""
        if isinstance(texts, str):
            texts = [texts]
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        texts = list(texts)
        bad = [type(t).__name__ for t in texts if not isinstance(t, str)]
        if bad:
            raise TypeError(f"expected a string or a list of strings, got a list holding {bad[0]}")
        for t in texts:
            check_text(t)
        rows = [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=add_special_tokens)]
        width = max(len(r) for r in rows) if rows else 0
        pad = self.pad_token_id
        if pad is None:  # the mosaicml repos name no pad token: pad with eos (masked out anyway)
            pad = self.eos_token_id if self.eos_token_id is not None else 0
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


def _check_ids(ids: Any) -> list[int]:
    if isinstance(ids, torch.Tensor):
        if ids.is_floating_point() or ids.dim() > 1:
            raise ValueError(f"decode takes a 1-D integer tensor of ids, got {ids.dtype} of shape {tuple(ids.shape)}")
        ids = ids.tolist()
    elif isinstance(ids, int):
        ids = [ids]
    out = []
    for i in ids:
        if isinstance(i, bool) or not isinstance(i, int):
            if isinstance(i, torch.Tensor) and i.dim() == 0 and not i.is_floating_point():
                i = int(i)
            else:
                raise TypeError(f"token ids must be integers, got {i!r}")
        if i < 0:
            raise ValueError(f"token ids must be non-negative, got {i}")
        out.append(i)
    return out
