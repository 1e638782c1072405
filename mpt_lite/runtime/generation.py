"""Text generation for MptForCausalLM: greedy or sampled decoding on the Engine (paged KV cache,
continuous batching).

Token ids in -> token ids out (prompt included, as transformers does); a string in -> the
completion string; a list of strings -> a list; stream=True -> a generator of text pieces."""
from __future__ import annotations

from typing import Any, Iterator, Sequence

import torch

from ..model.inputs import check_attention_mask, check_input_ids
from ..text.detok import TextStream, find_stop, text_pieces
from .arguments import (check_eos_token_id, check_flag, check_max_new_tokens, check_n_keep, check_prompts,
                        check_stops)
from .block_manager import DEFAULT_BLOCK_SIZE
from .constraints import constraint_factory
from .engine import Engine, check_prompt_lookup
from .sampler import SEED_MAX, SamplingParams


class PromptIds(list):
    """The token ids of a prompt that stands for text (a rendered conversation, encoded so that
    message text is never read as special tokens): generate() answers it with text, as it answers
    a string."""


def generate(model, inputs: Any = None, attention_mask: torch.Tensor | None = None, *,
             input_ids: torch.Tensor | None = None, max_new_tokens: int = 64, do_sample: bool = False,
             temperature: float = 1.0, top_k: int | None = None, top_p: float = 1.0,
             repetition_penalty: float = 1.0, seed: int | None = None, eos_token_id: Any = None,
             stop: str | Sequence[str] | None = None, stream: bool = False, context_shift: bool = False,
             n_keep: int = 0, prompt_lookup_num_tokens: int | None = None, assistant_model: Any = None,
             json_schema: Any = None, regex: str | None = None, grammar: str | None = None):
    if inputs is None:
        inputs = input_ids
    elif input_ids is not None:
        raise ValueError("generate() got both inputs and input_ids: pass the prompt once")
    if inputs is None:
        raise ValueError("generate() needs a prompt: a string, a list of strings or a LongTensor of token ids")
    check_flag("stream", stream)
    check_flag("context_shift", context_shift)
    check_n_keep(n_keep)
    params = SamplingParams(do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p,
                            repetition_penalty=repetition_penalty, seed=seed)
    check_max_new_tokens(max_new_tokens, None if context_shift else model.config.max_seq_len)
    stops = check_stops(stop)
    check_prompts(inputs)
    eos_token_id = check_eos_token_id(eos_token_id, model.config.vocab_size)
    eos = eos_ids(model, eos_token_id)
    opts = {"context_shift": bool(context_shift), "n_keep": n_keep,
            "prompt_lookup_num_tokens": check_prompt_lookup(prompt_lookup_num_tokens), "assistant_model": assistant_model,
            "constrain": constraint_factory(model.tokenizer, json_schema, regex, grammar)}
    if assistant_model is not None and opts["prompt_lookup_num_tokens"]:
        raise ValueError("pass one of assistant_model and prompt_lookup_num_tokens, not both")

    if isinstance(inputs, torch.Tensor):
        if stream:
            raise ValueError("stream=True needs a string prompt (it yields text)")
        if stops:
            raise ValueError("stop strings need a string prompt; with token ids use eos_token_id")
        return _generate_ids(model, inputs, attention_mask, max_new_tokens, params, eos,
                             padding_id(model, eos_token_id), opts)
    if attention_mask is not None:
        raise ValueError("attention_mask goes with token ids (a LongTensor prompt); text prompts are not padded")
    tok = model.tokenizer
    if tok is None:
        raise ValueError("this model has no tokenizer: pass token ids (a LongTensor) instead of text")
    if isinstance(inputs, (str, PromptIds)):
        pieces = _stream_text(model, tok, inputs, max_new_tokens, params, eos, stops, opts)
        return pieces if stream else "".join(pieces)
    if isinstance(inputs, (list, tuple)) and all(isinstance(t, str) for t in inputs):
        if stream:
            raise ValueError("stream=True takes one string prompt, not a list")
        if not inputs:
            return []
        return _generate_texts(model, tok, list(inputs), max_new_tokens, params, eos, stops, opts)
    raise TypeError(f"generate() takes a string, a list of strings or a LongTensor, not {type(inputs).__name__}")


def _eos_given(model, eos_token_id: Any) -> Any:
    """eos_token_id as given, else the config's or the tokenizer's eos (None: none)."""
    if eos_token_id is None:
        eos_token_id = model.config.eos_token_id
        if eos_token_id is None and model.tokenizer is not None:
            eos_token_id = model.tokenizer.eos_token_id
    return eos_token_id


def eos_ids(model, eos_token_id: Any) -> set[int]:
    """The token ids that end generation: those given, else the config's or the tokenizer's eos."""
    eos_token_id = _eos_given(model, eos_token_id)
    if eos_token_id is None:
        return set()
    return {int(e) for e in eos_token_id} if isinstance(eos_token_id, (list, tuple, set)) else {int(eos_token_id)}


def padding_id(model, eos_token_id: Any) -> int:
    """What fills a finished row of generate()'s ids: pad_token_id, else the first eos id given (as transformers
    pads with eos_token_id[0]), else 0."""
    if model.config.pad_token_id is not None:
        return int(model.config.pad_token_id)
    eos = _eos_given(model, eos_token_id)
    if isinstance(eos, (list, tuple)):
        return int(eos[0]) if len(eos) else 0
    if isinstance(eos, set):
        return min(int(e) for e in eos) if eos else 0
    return int(eos) if eos is not None else 0


def _engine(model, rows: list[list[int]], max_new: int, opts: dict):
    """An engine whose cache holds every row at full length, or at max_seq_len when the context
    shifts (blocks are committed only when used)."""
    limit = model.config.max_seq_len if opts["context_shift"] else None
    blocks = sum(-(-min(len(r) + max_new, limit or len(r) + max_new) // DEFAULT_BLOCK_SIZE) for r in rows)
    return Engine(model, num_blocks=max(blocks, 1), max_num_seqs=max(len(rows), 1),
                  assistant_model=opts["assistant_model"])


def _add(engine, row: list[int], max_new: int, params: SamplingParams, eos: set[int], index: int, opts: dict,
         stop_fn=None):
    if params.do_sample and params.seed is not None and index:  # each row its own, reproducible, stream
        seed = int(params.seed) + index
        params = SamplingParams(**{**params.__dict__, "seed": seed if seed <= SEED_MAX else seed - (1 << 64)})
    constrain = opts["constrain"]
    request_opts = {k: v for k, v in opts.items() if k not in ("assistant_model", "constrain")}  # the engine's
    return engine.add_request(row, max_new, params=params, eos_token_id=sorted(eos), stop_fn=stop_fn,
                              constraint=constrain() if constrain is not None else None, **request_opts)


def _generate_ids(model, ids, mask, max_new, params, eos, pad, opts) -> torch.Tensor:
    """Rows run unpadded (a padded position is dropped, as the mask says), so left padding gives
    what transformers gives: ALiBi biases and llm-foundry's shifted wpe positions are relative."""
    check_input_ids(ids, model.config.vocab_size)
    if mask is not None:
        mask = check_attention_mask(mask, ids.shape[0], ids.shape[1], ids.device)
    rows = [r[m != 0].tolist() for r, m in zip(ids, mask)] if mask is not None else ids.tolist()
    for i, r in enumerate(rows):
        if not r:
            raise ValueError(f"row {i} of attention_mask masks every token")
    engine = _engine(model, rows, max_new, opts)
    reqs = [_add(engine, r, max_new, params, eos, i, opts) for i, r in enumerate(rows)]
    for _ in engine.run():
        pass
    width = max(len(r.output) for r in reqs)
    if width == 0:
        return ids.clone()
    new = torch.full((len(reqs), width), pad, dtype=ids.dtype)
    for i, r in enumerate(reqs):
        new[i, :len(r.output)] = torch.tensor(r.output, dtype=ids.dtype)
    return torch.cat([ids, new.to(ids.device)], dim=1)


def stop_checker(tok, stops: list[str]):
    """An engine stop_fn: whether the decoded tail of the output holds a stop string (None: no stops)."""
    if not stops:
        return None
    tail = 4 * max(len(s) for s in stops) + 4  # a character spans at most 4 byte-level tokens

    def hit(out: list[int]) -> bool:
        return find_stop(tok.decode(out[-tail:]), stops) is not None

    return hit


def _prompt_ids(model, tok, prompt: str | PromptIds) -> list[int]:
    ids = list(prompt) if isinstance(prompt, PromptIds) else tok.encode(prompt)
    if not ids:
        raise ValueError("the prompt encodes to no tokens")
    check_input_ids(torch.tensor([ids], dtype=torch.long), model.config.vocab_size)
    return ids


def _stream_text(model, tok, prompt: str | PromptIds, max_new: int, params, eos, stops, opts) -> Iterator[str]:
    ids = _prompt_ids(model, tok, prompt)
    engine = _engine(model, [ids], max_new, opts)
    req = _add(engine, ids, max_new, params, eos, 0, opts)
    return TextStream(tok, engine.stream(req), eos, stops)


def _generate_texts(model, tok, prompts, max_new, params, eos, stops, opts) -> list[str]:
    rows = [_prompt_ids(model, tok, p) for p in prompts]
    engine = _engine(model, rows, max_new, opts)
    reqs = [_add(engine, r, max_new, params, eos, i, opts, stop_checker(tok, stops)) for i, r in enumerate(rows)]
    for _ in engine.run():
        pass
    return ["".join(text_pieces(tok, r.output, eos, stops)) for r in reqs]
