"""The four heads on top of MptModel: causal LM, sequence classification, token classification,
question answering; TASKS maps `load(task=...)` names to them."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import MptConfig
from .base import MptModel, MptPreTrainedModel
from .inputs import check_labels, check_logits_to_keep, check_positions, reject_unused
from .outputs import (
    BaseModelOutput,
    CausalLMOutput,
    QuestionAnsweringOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)


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
        reject_unused(unused, type(self).__name__)
        check_logits_to_keep(logits_to_keep)
        from ..runtime import native_forward

        if native_forward.applies(self, input_ids, attention_mask, inputs_embeds, past_key_values, use_cache,
                                  output_hidden_states, logits_to_keep):
            logits, cache = native_forward.forward(self, input_ids, past_key_values, use_cache, logits_to_keep)
            return self._with_loss(logits, labels, cache, None)
        out = self._backbone(input_ids, attention_mask, inputs_embeds, past_key_values, use_cache,
                             output_hidden_states)
        hidden = out.last_hidden_state
        if isinstance(logits_to_keep, int):
            if logits_to_keep:
                hidden = hidden[:, -logits_to_keep:]
        else:
            hidden = hidden[:, logits_to_keep]
        return self._with_loss(self.logits(hidden), labels, out.past_key_values, out.hidden_states)

    @staticmethod
    def _with_loss(logits: torch.Tensor, labels: Any, past_key_values: Any, hidden_states: Any) -> CausalLMOutput:
        loss = None
        if labels is not None:
            labels = check_labels(labels, logits.shape[:2], "labels")
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                                   labels[:, 1:].reshape(-1), ignore_index=-100)
        return CausalLMOutput(loss=loss, logits=logits, past_key_values=past_key_values, hidden_states=hidden_states)

    def forward_paged(self, input_ids: torch.Tensor, step: Any, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (rows, vocab) of the engine's flat batch (see MptModel.forward_paged); rows picks tokens."""
        hidden = self.transformer.forward_paged(input_ids, step)
        return self.logits(hidden if rows is None else hidden[rows])

    def generate(self, inputs: Any = None, **kwargs: Any):
        from ..runtime.generation import generate

        return generate(self, inputs, **kwargs)

    def chat(self, messages: Any, stream: bool = False, **kwargs: Any):
        """The assistant's reply to ``messages`` ([{"role": "user", "content": ...}, ...]) in the
        checkpoint's chat format (ChatML for mpt-7b-chat / mpt-30b-chat); stops at <|im_end|>.
        kwargs go to generate (max_new_tokens, do_sample, temperature, ...); stream=True yields text."""
        from ..runtime.chat import chat

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
        reject_unused(unused, type(self).__name__)
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
        reject_unused(unused, type(self).__name__)
        out = self._backbone(input_ids, attention_mask, inputs_embeds, past_key_values, use_cache,
                             output_hidden_states)
        logits = self.classifier(out.last_hidden_state.to(self.classifier.weight.dtype))
        loss = None
        if labels is not None:
            labels = check_labels(labels, logits.shape[:2], "labels")
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
        reject_unused(unused, type(self).__name__)
        out = self._backbone(input_ids, attention_mask, inputs_embeds, past_key_values, use_cache,
                             output_hidden_states)
        logits = self.qa_outputs(out.last_hidden_state.to(self.qa_outputs.weight.dtype))
        start_logits, end_logits = (t.squeeze(-1).contiguous() for t in logits.split(1, dim=-1))
        loss = None
        if start_positions is not None and end_positions is not None:
            start_positions = check_positions(start_positions, logits.shape[0], "start_positions", logits.device)
            end_positions = check_positions(end_positions, logits.shape[0], "end_positions", logits.device)
            ignored = start_logits.shape[1]  # positions outside the input are ignored, as transformers does
            start_positions = start_positions.clamp(0, ignored)
            end_positions = end_positions.clamp(0, ignored)
            loss = (F.cross_entropy(start_logits, start_positions, ignore_index=ignored)
                    + F.cross_entropy(end_logits, end_positions, ignore_index=ignored)) / 2
        return QuestionAnsweringOutput(loss=loss, start_logits=start_logits, end_logits=end_logits,
                                       past_key_values=out.past_key_values, hidden_states=out.hidden_states)


TASKS = {
    "base": MptModel,
    "causal-lm": MptForCausalLM,
    "sequence-classification": MptForSequenceClassification,
    "token-classification": MptForTokenClassification,
    "question-answering": MptForQuestionAnswering,
}
