"""MptModel and the four heads. Plain torch; knows nothing of files (see loading.py)."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .cache import MptCache
from .config import MptConfig
from .layers import MptBlock, MptNorm, alibi_slopes, attention_mask_4d
from .threads import limit_torch_threads
from .outputs import (
    BaseModelOutput,
    CausalLMOutput,
    QuestionAnsweringOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)


class TiedEmbedding(nn.Embedding):
    """transformer.wte: the token embedding, and (tied) the output projection of the LM head."""

    def as_linear(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight.to(x.dtype))


class MptPreTrainedModel(nn.Module):
    config_class = MptConfig
    base_model_prefix = "transformer"
    # torch's intra-op threads while this model computes (None: leave torch alone); the loader sets
    # 1 for quantized models, whose heavy work runs in mpt_lite's own pool (see threads.py)
    torch_threads: int | None = None

    def __init__(self, config: MptConfig) -> None:
        super().__init__()
        if not isinstance(config, MptConfig):
            raise TypeError(f"expected an MptConfig, got {type(config).__name__}")
        bad = config.unsupported_features()
        if bad:
            raise ValueError(f"mpt_lite cannot compute this MPT variant exactly: {'; '.join(bad)}")
        self.config = config
        self.tokenizer = None

    def init_weights(self) -> None:
        std = self.config.initializer_range
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=std)
            elif isinstance(module, MptNorm):
                nn.init.ones_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with limit_torch_threads(self.torch_threads):
            return super().__call__(*args, **kwargs)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer_model().norm_f.weight.dtype

    def transformer_model(self) -> "MptModel":
        return self if isinstance(self, MptModel) else self.transformer

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @classmethod
    def from_pretrained(cls, name_or_path: Any, bits: int | None = None, quant_type: str | None = None,
                        dtype: torch.dtype = torch.float32, device: Any = "cpu", **config_overrides: Any):
        from .loading import load_pretrained

        return load_pretrained(cls, name_or_path, bits=bits, quant_type=quant_type, dtype=dtype,
                               device=device, **config_overrides)

    def save_pretrained(self, save_directory: Any) -> None:
        from .loading import save_pretrained

        save_pretrained(self, save_directory)


class MptModel(MptPreTrainedModel):
    def __init__(self, config: MptConfig, linear: type = nn.Linear) -> None:
        super().__init__(config)
        self.wte = TiedEmbedding(config.vocab_size, config.d_model)
        self.wpe = nn.Embedding(config.max_seq_len, config.d_model) if config.uses_wpe else None
        self.blocks = nn.ModuleList([MptBlock(config, linear) for _ in range(config.n_layers)])
        self.norm_f = MptNorm(config.d_model, config.layer_norm_epsilon, config.norm_type, not config.no_bias)
        self._slopes: dict[torch.device, torch.Tensor] = {}
        if not any(p.is_meta for p in self.parameters()):
            self.init_weights()

    def alibi_slopes(self, device: torch.device) -> torch.Tensor | None:
        if not self.config.attn_config["alibi"]:
            return None
        if device not in self._slopes:
            slopes = alibi_slopes(self.config.n_heads, self.config.attn_config["alibi_bias_max"])
            self._slopes[device] = slopes.to(device)
        return self._slopes[device]

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.wte(input_ids)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        past_key_values: Any = None,
        use_cache: bool = False,
        output_hidden_states: bool = False,
        **unused: Any,
    ) -> BaseModelOutput:
        _reject_unused(unused, type(self).__name__)
        past = MptCache.coerce(past_key_values)
        x = self._input_embeddings(input_ids, inputs_embeds)
        b, s, _ = x.shape
        past_len = past.get_seq_length() if past is not None else 0
        if past is not None and len(past) != len(self.blocks):
            raise ValueError(f"past_key_values has {len(past)} layers, the model {len(self.blocks)}")
        if past is not None and past[0][0].shape[0] != b:
            raise ValueError(f"past_key_values is for batch {past[0][0].shape[0]}, the input has batch {b}")
        attention_mask = _check_attention_mask(attention_mask, b, past_len + s, x.device)
        total = past_len + s
        if total > self.config.max_seq_len:
            raise ValueError(
                f"{total} tokens exceed max_seq_len={self.config.max_seq_len}; ALiBi models run longer when "
                f"loaded with a larger max_seq_len (from_pretrained(..., max_seq_len={total}))"
                if not self.config.uses_wpe
                else f"{total} tokens exceed max_seq_len={self.config.max_seq_len}, the size of the learned "
                f"position embedding (transformer.wpe) of this model"
            )
        if self.wpe is not None:
            pos = torch.arange(past_len, total, device=x.device).unsqueeze(0).expand(b, s)
            if attention_mask is not None:  # left padding shifts positions, as llm-foundry does
                pads = torch.cumsum((attention_mask == 0).to(torch.long), dim=1)[:, past_len:]
                pos = (pos - pads).clamp(min=0)
            x = x + self.wpe(pos).to(x.dtype)
        mask = attention_mask_4d(attention_mask, b, s, past_len, x.device)
        slopes = self.alibi_slopes(x.device)
        hidden_states = [] if output_hidden_states else None
        presents = []
        for i, block in enumerate(self.blocks):
            if hidden_states is not None:
                hidden_states.append(x)
            x, present = block(x, slopes, mask, past[i] if past is not None else None)
            presents.append(present)
        x = self.norm_f(x)
        if hidden_states is not None:
            hidden_states.append(x)
        cache = MptCache(presents) if (use_cache or past is not None) else None
        return BaseModelOutput(
            last_hidden_state=x,
            past_key_values=cache,
            hidden_states=tuple(hidden_states) if hidden_states is not None else None,
        )

    def forward_paged(self, input_ids: torch.Tensor, step: Any) -> torch.Tensor:
        """The engine's forward: input_ids (tokens,) holds the new tokens of the sequences a
        kv_cache.PagedStep schedules, back to back; returns their hidden states (tokens, d_model)."""
        x = self.embed(input_ids.view(1, -1).to(self.wte.weight.device))
        if self.wpe is not None:
            x = x + self.wpe(step.positions.view(1, -1).to(x.device)).to(x.dtype)
        slopes = self.alibi_slopes(x.device)
        for i, block in enumerate(self.blocks):
            x, _ = block(x, slopes, None, step.layer(i))
        return self.norm_f(x)[0]

    def _input_embeddings(self, input_ids, inputs_embeds) -> torch.Tensor:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if inputs_embeds is not None:
            if not isinstance(inputs_embeds, torch.Tensor) or not inputs_embeds.is_floating_point():
                raise TypeError("inputs_embeds must be a floating-point tensor")
            if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != self.config.d_model:
                raise ValueError(
                    f"inputs_embeds must have shape (batch, tokens, {self.config.d_model}), "
                    f"got {tuple(inputs_embeds.shape)}"
                )
            if inputs_embeds.shape[1] == 0:
                raise ValueError("inputs_embeds has no tokens")
            return inputs_embeds.to(self.dtype)
        check_input_ids(input_ids, self.config.vocab_size)
        return self.embed(input_ids.to(self.wte.weight.device))


def check_input_ids(input_ids: Any, vocab_size: int) -> None:
    if not isinstance(input_ids, torch.Tensor):
        raise TypeError(f"input_ids must be a torch.LongTensor, got {type(input_ids).__name__}")
    if input_ids.is_floating_point() or input_ids.is_complex() or input_ids.dtype == torch.bool:
        raise TypeError(f"input_ids must hold integer token ids (torch.long), got {input_ids.dtype}")
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must have shape (batch, tokens), got {tuple(input_ids.shape)}")
    if input_ids.shape[1] == 0 or input_ids.shape[0] == 0:
        raise ValueError(f"input_ids is empty: shape {tuple(input_ids.shape)}")
    lo, hi = int(input_ids.min()), int(input_ids.max())
    if lo < 0 or hi >= vocab_size:
        bad = lo if lo < 0 else hi
        raise IndexError(f"token id {bad} is out of range for a vocabulary of {vocab_size}")


def _check_attention_mask(mask: Any, batch: int, total: int, device: torch.device) -> torch.Tensor | None:
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"attention_mask must be a tensor, got {type(mask).__name__}")
    if mask.shape != (batch, total):
        raise ValueError(
            f"attention_mask must have shape (batch, past + new tokens) = ({batch}, {total}), "
            f"got {tuple(mask.shape)}"
        )
    mask = mask.to(device)
    if bool((mask != 0).all()):
        return None
    return mask


def _reject_unused(unused: dict, who: str) -> None:
    given = [k for k, v in unused.items() if v is not None and v is not False and not (k == "logits_to_keep" and v == 0)]
    if given:
        raise TypeError(f"{who}.forward() got unexpected arguments: {', '.join(sorted(given))}")


class _HeadModel(MptPreTrainedModel):
    def __init__(self, config: MptConfig, linear: type = nn.Linear) -> None:
        super().__init__(config)
        self.transformer = MptModel(config, linear)

    def _backbone(self, input_ids, attention_mask, inputs_embeds, past_key_values, use_cache,
                  output_hidden_states) -> BaseModelOutput:
        return self.transformer(input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
                                past_key_values=past_key_values, use_cache=use_cache,
                                output_hidden_states=output_hidden_states)


class MptForCausalLM(_HeadModel):
    def __init__(self, config: MptConfig, linear: type = nn.Linear) -> None:
        super().__init__(config, linear)
        self.lm_head = None if config.tie_word_embeddings else linear(config.d_model, config.vocab_size, bias=False)
        if self.lm_head is not None and not self.lm_head.weight.is_meta:
            nn.init.normal_(self.lm_head.weight, std=config.initializer_range)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        out = self.transformer.wte.as_linear(hidden) if self.lm_head is None else self.lm_head(hidden)
        scale = self.config.logit_scale_value
        return out * scale if scale is not None else out

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, labels=None, past_key_values=None,
                use_cache=False, output_hidden_states=False, logits_to_keep=0, **unused) -> CausalLMOutput:
        _reject_unused(unused, type(self).__name__)
        out = self._backbone(input_ids, attention_mask, inputs_embeds, past_key_values, use_cache,
                             output_hidden_states)
        hidden = out.last_hidden_state
        if isinstance(logits_to_keep, int):
            if logits_to_keep < 0:
                raise ValueError(f"logits_to_keep must be >= 0, got {logits_to_keep}")
            if logits_to_keep:
                hidden = hidden[:, -logits_to_keep:]
        else:
            hidden = hidden[:, logits_to_keep]
        logits = self.logits(hidden)
        loss = None
        if labels is not None:
            labels = _check_labels(labels, logits.shape[:2], "labels")
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                                   labels[:, 1:].reshape(-1), ignore_index=-100)
        return CausalLMOutput(loss=loss, logits=logits, past_key_values=out.past_key_values,
                              hidden_states=out.hidden_states)

    def forward_paged(self, input_ids: torch.Tensor, step: Any, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (rows, vocab) of the engine's flat batch (see MptModel.forward_paged); rows picks tokens."""
        hidden = self.transformer.forward_paged(input_ids, step)
        return self.logits(hidden if rows is None else hidden[rows])

    def generate(self, inputs: Any = None, **kwargs: Any):
        from .generation import generate

        return generate(self, inputs, **kwargs)

    def chat(self, messages: Any, stream: bool = False, **kwargs: Any):
        """The assistant's reply to ``messages`` ([{"role": "user", "content": ...}, ...]) in the
        checkpoint's chat format (ChatML for mpt-7b-chat / mpt-30b-chat); stops at <|im_end|>.
        kwargs go to generate (max_new_tokens, do_sample, temperature, ...); stream=True yields text."""
        from .chat import chat

        return chat(self, messages, stream=stream, **kwargs)


class MptForSequenceClassification(_HeadModel):
    def __init__(self, config: MptConfig, linear: type = nn.Linear) -> None:
        super().__init__(config, linear)
        self.num_labels = config.num_labels
        self.score = nn.Linear(config.d_model, config.num_labels, bias=False)
        if not self.score.weight.is_meta:
            nn.init.normal_(self.score.weight, std=config.initializer_range)

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, labels=None, past_key_values=None,
                use_cache=False, output_hidden_states=False, **unused) -> SequenceClassifierOutput:
        _reject_unused(unused, type(self).__name__)
        out = self._backbone(input_ids, attention_mask, inputs_embeds, past_key_values, use_cache,
                             output_hidden_states)
        logits = self.score(out.last_hidden_state.to(self.score.weight.dtype))
        batch = logits.shape[0]
        pad = self.config.pad_token_id
        if pad is None and batch != 1:
            raise ValueError("Cannot handle batch sizes > 1 if no padding token is defined.")
        if pad is None or input_ids is None:
            last = torch.full((batch,), logits.shape[1] - 1, dtype=torch.long, device=logits.device)
        else:
            # the rightmost token that is not padding handles both left and right padding
            non_pad = (input_ids != pad).to(logits.device, torch.int32)
            idx = torch.arange(input_ids.shape[-1], device=logits.device, dtype=torch.int32)
            last = (idx * non_pad).argmax(-1)
        pooled = logits[torch.arange(batch, device=logits.device), last]
        loss = None
        if labels is not None:
            loss = self._loss(pooled, labels)
        return SequenceClassifierOutput(loss=loss, logits=pooled, past_key_values=out.past_key_values,
                                        hidden_states=out.hidden_states)

    def _loss(self, pooled: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if not isinstance(labels, torch.Tensor):
            raise TypeError(f"labels must be a tensor, got {type(labels).__name__}")
        labels = labels.to(pooled.device)
        problem = self.config.problem_type
        if problem is None:
            if self.num_labels == 1:
                problem = "regression"
            elif labels.dtype in (torch.long, torch.int):
                problem = "single_label_classification"
            else:
                problem = "multi_label_classification"
        if problem == "regression":
            if self.num_labels == 1:
                return F.mse_loss(pooled.squeeze(), labels.squeeze().to(pooled.dtype))
            return F.mse_loss(pooled, labels.to(pooled.dtype))
        if problem == "single_label_classification":
            if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_labels):
                raise IndexError(f"label out of range for {self.num_labels} classes: {labels.tolist()}")
            return F.cross_entropy(pooled, labels)
        if problem == "multi_label_classification":
            return F.binary_cross_entropy_with_logits(pooled, labels.to(pooled.dtype))
        raise ValueError(f"unknown problem_type {problem!r}")


class MptForTokenClassification(_HeadModel):
    def __init__(self, config: MptConfig, linear: type = nn.Linear) -> None:
        super().__init__(config, linear)
        self.num_labels = config.num_labels
        self.classifier = nn.Linear(config.d_model, config.num_labels)
        if not self.classifier.weight.is_meta:
            nn.init.normal_(self.classifier.weight, std=config.initializer_range)
            nn.init.zeros_(self.classifier.bias)

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, labels=None, past_key_values=None,
                use_cache=False, output_hidden_states=False, **unused) -> TokenClassifierOutput:
        _reject_unused(unused, type(self).__name__)
        out = self._backbone(input_ids, attention_mask, inputs_embeds, past_key_values, use_cache,
                             output_hidden_states)
        logits = self.classifier(out.last_hidden_state.to(self.classifier.weight.dtype))
        loss = None
        if labels is not None:
            labels = _check_labels(labels, logits.shape[:2], "labels")
            loss = F.cross_entropy(logits.reshape(-1, self.num_labels), labels.reshape(-1))
        return TokenClassifierOutput(loss=loss, logits=logits, past_key_values=out.past_key_values,
                                     hidden_states=out.hidden_states)


class MptForQuestionAnswering(_HeadModel):
    def __init__(self, config: MptConfig, linear: type = nn.Linear) -> None:
        super().__init__(config, linear)
        self.qa_outputs = nn.Linear(config.d_model, 2)
        if not self.qa_outputs.weight.is_meta:
            nn.init.normal_(self.qa_outputs.weight, std=config.initializer_range)
            nn.init.zeros_(self.qa_outputs.bias)

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, start_positions=None,
                end_positions=None, past_key_values=None, use_cache=False, output_hidden_states=False,
                **unused) -> QuestionAnsweringOutput:
        _reject_unused(unused, type(self).__name__)
        out = self._backbone(input_ids, attention_mask, inputs_embeds, past_key_values, use_cache,
                             output_hidden_states)
        logits = self.qa_outputs(out.last_hidden_state.to(self.qa_outputs.weight.dtype))
        start_logits, end_logits = (t.squeeze(-1).contiguous() for t in logits.split(1, dim=-1))
        loss = None
        if start_positions is not None and end_positions is not None:
            start_positions = torch.as_tensor(start_positions, device=logits.device)
            end_positions = torch.as_tensor(end_positions, device=logits.device)
            if start_positions.dim() > 1:
                start_positions = start_positions.squeeze(-1)
            if end_positions.dim() > 1:
                end_positions = end_positions.squeeze(-1)
            ignored = start_logits.shape[1]  # positions outside the input are ignored, as transformers does
            start_positions = start_positions.clamp(0, ignored)
            end_positions = end_positions.clamp(0, ignored)
            loss = (F.cross_entropy(start_logits, start_positions, ignore_index=ignored)
                    + F.cross_entropy(end_logits, end_positions, ignore_index=ignored)) / 2
        return QuestionAnsweringOutput(loss=loss, start_logits=start_logits, end_logits=end_logits,
                                       past_key_values=out.past_key_values, hidden_states=out.hidden_states)


def _check_labels(labels: Any, shape: torch.Size, name: str) -> torch.Tensor:
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(labels).__name__}")
    if labels.is_floating_point():
        raise TypeError(f"{name} must hold integer class ids, got {labels.dtype}")
    if tuple(labels.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(labels.shape)}")
    return labels.long()


TASKS = {
    "base": MptModel,
    "causal-lm": MptForCausalLM,
    "sequence-classification": MptForSequenceClassification,
    "token-classification": MptForTokenClassification,
    "question-answering": MptForQuestionAnswering,
}
