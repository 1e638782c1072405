"""Text generation for MptForCausalLM: greedy or sampled decoding over the key/value cache.

Token ids in -> token ids out (prompt included, as transformers does); a string in -> the
completion string; a list of strings -> a list; stream=True -> a generator of text pieces."""
from __future__ import annotations

from typing import Any, Iterator, Sequence

import torch

from .sampling import SamplingParams, mask_beyond_tokenizer, next_tokens


def generate(model, inputs: Any = None, attention_mask: torch.Tensor | None = None, *,
             input_ids: torch.Tensor | None = None, max_new_tokens: int = 64, do_sample: bool = False,
             temperature: float = 1.0, top_k: int | None = None, top_p: float = 1.0,
             repetition_penalty: float = 1.0, seed: int | None = None, eos_token_id: Any = None,
             stop: str | Sequence[str] | None = None, stream: bool = False):
    if inputs is None:
        inputs = input_ids
    if inputs is None:
        raise ValueError("generate() needs a prompt: a string, a list of strings or a LongTensor of token ids")
    params = SamplingParams(do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p,
                            repetition_penalty=repetition_penalty, seed=seed)
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be a non-negative integer, got {max_new_tokens!r}")
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if any(not isinstance(s, str) or not s for s in stops):
        raise ValueError("stop must be a non-empty string or a list of them")
    eos = _eos_ids(model, eos_token_id)

    if isinstance(inputs, torch.Tensor):
        if stream:
            raise ValueError("stream=True needs a string prompt (it yields text)")
        if stops:
            raise ValueError("stop strings need a string prompt; with token ids use eos_token_id")
        return _generate_ids(model, inputs, attention_mask, max_new_tokens, params, eos)
    tok = model.tokenizer
    if tok is None:
        raise ValueError("this model has no tokenizer: pass token ids (a LongTensor) instead of text")
    if isinstance(inputs, str):
        pieces = _stream_text(model, tok, inputs, max_new_tokens, params, eos, stops)
        return pieces if stream else "".join(pieces)
    if isinstance(inputs, (list, tuple)) and all(isinstance(t, str) for t in inputs):
        if stream:
            raise ValueError("stream=True takes one string prompt, not a list")
        if not inputs:
            return []
        return _generate_texts(model, tok, list(inputs), max_new_tokens, params, eos, stops)
    raise TypeError(f"generate() takes a string, a list of strings or a LongTensor, not {type(inputs).__name__}")


def _eos_ids(model, eos_token_id: Any) -> set[int]:
    if eos_token_id is None:
        eos_token_id = model.config.eos_token_id
        if eos_token_id is None and model.tokenizer is not None:
            eos_token_id = model.tokenizer.eos_token_id
    if eos_token_id is None:
        return set()
    return {int(e) for e in eos_token_id} if isinstance(eos_token_id, (list, tuple, set)) else {int(eos_token_id)}


def _decode_steps(model, ids: torch.Tensor, mask: torch.Tensor | None, max_new: int, params: SamplingParams,
                  eos: set[int]) -> Iterator[torch.Tensor]:
    """Yields the next token of each row, (batch,), until every row has hit eos or max_new tokens."""
    batch = ids.shape[0]
    limit = model.config.max_seq_len - ids.shape[1]
    if max_new > limit:
        raise ValueError(f"the prompt ({ids.shape[1]} tokens) plus max_new_tokens={max_new} exceed max_seq_len="
                         f"{model.config.max_seq_len}; lower max_new_tokens or load with a larger max_seq_len")
    gen = params.generator(ids.device)
    n_tokens = len(model.tokenizer) if getattr(model, "tokenizer", None) is not None else None
    finished = torch.zeros(batch, dtype=torch.bool, device=ids.device)
    history = ids
    past = None
    step_ids = ids
    with torch.inference_mode():
        for _ in range(max_new):
            out = model(input_ids=step_ids, attention_mask=mask, past_key_values=past, use_cache=True,
                        logits_to_keep=1)
            past = out.past_key_values
            logits = mask_beyond_tokenizer(out.logits[:, -1, :].float(), n_tokens)
            nxt = next_tokens(logits, history, params, gen)
            if eos:
                pad = next(iter(eos))
                nxt = torch.where(finished, torch.full_like(nxt, pad), nxt)
            yield nxt
            if eos:
                finished |= torch.isin(nxt, torch.tensor(sorted(eos), device=nxt.device))
                if bool(finished.all()):
                    return
            history = torch.cat([history, nxt[:, None]], dim=1)
            step_ids = nxt[:, None]
            if mask is not None:
                mask = torch.cat([mask, torch.ones((batch, 1), dtype=mask.dtype, device=mask.device)], dim=1)


def _generate_ids(model, ids, mask, max_new, params, eos) -> torch.Tensor:
    from .modeling import check_input_ids

    check_input_ids(ids, model.config.vocab_size)
    new = list(_decode_steps(model, ids, mask, max_new, params, eos))
    if not new:
        return ids.clone()
    return torch.cat([ids, torch.stack(new, dim=1)], dim=1)


def _stream_text(model, tok, prompt: str, max_new: int, params, eos, stops) -> Iterator[str]:
    ids = torch.tensor([tok.encode(prompt)], dtype=torch.long)
    if ids.shape[1] == 0:
        raise ValueError("the prompt encodes to no tokens")
    from .modeling import check_input_ids

    check_input_ids(ids, model.config.vocab_size)
    out_ids: list[int] = []
    emitted = 0
    text = ""
    for nxt in _decode_steps(model, ids, None, max_new, params, eos):
        t = int(nxt[0])
        if t in eos:
            break
        out_ids.append(t)
        text = tok.decode(out_ids)
        if text.endswith("\ufffd"):  # an unfinished multi-byte character: wait for its next byte
            continue
        cut = _find_stop(text, stops)
        if cut is not None:
            if cut > emitted:
                yield text[emitted:cut]
            return
        safe = len(text) - _held_back(text, stops)
        if safe > emitted:
            yield text[emitted:safe]
            emitted = safe
    cut = _find_stop(text, stops)
    end = cut if cut is not None else len(text)
    if end > emitted:
        yield text[emitted:end]


def _generate_texts(model, tok, prompts, max_new, params, eos, stops) -> list[str]:
    enc = tok(prompts, padding_side="left")
    new = list(_decode_steps(model, enc["input_ids"], enc["attention_mask"], max_new, params, eos))
    results = []
    for row in range(len(prompts)):
        ids = []
        for step in new:
            t = int(step[row])
            if t in eos:
                break
            ids.append(t)
        text = tok.decode(ids)
        cut = _find_stop(text, stops)
        results.append(text if cut is None else text[:cut])
    return results


def _find_stop(text: str, stops: list[str]) -> int | None:
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else None


def _held_back(text: str, stops: list[str]) -> int:
    """How many trailing characters could still turn out to be the start of a stop string."""
    keep = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:n]):
                keep = max(keep, n)
                break
    return keep
