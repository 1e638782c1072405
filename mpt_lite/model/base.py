"""MptPreTrainedModel (what every head shares) and MptModel, the transformer itself. Plain torch;
knows nothing of files (from_pretrained / save_pretrained hand over to mpt_lite.hub)."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import MptConfig
from ..quant.layers import QuantWeight
from .attention_backend import PagedBatch
from .cache import MptCache
from .inputs import check_attention_mask, check_input_ids, check_past, reject_unused
from .layers import CausalMask, MptAttention, MptBlock, MptNorm, alibi_slopes, attention_mask_4d
from .outputs import BaseModelOutput


class TiedEmbedding(nn.Embedding):
    """transformer.wte: the token embedding, and (tied) the output projection of the LM head."""

    def as_linear(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight.to(x.dtype))


class MptPreTrainedModel(nn.Module):
    config_class = MptConfig
    base_model_prefix = "transformer"

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

    @property
    def num_threads(self) -> int | None:
        """Threads of mpt_lite's CPU kernels in this model's calls: None (the default) uses the
        kernels' pool size (MPT_LITE_NUM_THREADS, else every core; mpt_lite.kernels.set_num_threads),
        n caps them at n for this model only, so models in different Python threads may differ.
        The engine follows its model. torch's own thread settings are never changed."""
        return self.__dict__.get("_num_threads")

    @num_threads.setter
    def num_threads(self, n: int | None) -> None:
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ValueError(f"num_threads must be None or a positive int, got {n!r}")
        for m in self.modules():
            if isinstance(m, MptPreTrainedModel):
                m.__dict__["_num_threads"] = n
            elif isinstance(m, (QuantWeight, MptAttention)):
                m.num_threads = n

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
                        dtype: torch.dtype = torch.float32, device: Any = "cpu", embedding_bits: int | None = None,
                        group_size: int | None = None, **config_overrides: Any):
        """bits=4 keeps the tied wte/lm_head at int8 unless embedding_bits=4 (or 6: int6, CPU). group_size (int4 only): in_features
        per scale, 32 (default, 4.5 bits per weight), 64 (4.25) or 128 (4.125)."""
        from ..hub.loading import load_pretrained

        return load_pretrained(cls, name_or_path, bits=bits, quant_type=quant_type, dtype=dtype,
                               device=device, embedding_bits=embedding_bits, group_size=group_size,
                               **config_overrides)

    def save_pretrained(self, save_directory: Any) -> None:
        from ..hub.saving import save_pretrained

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
        reject_unused(unused, type(self).__name__)
        past = MptCache.coerce(past_key_values)
        x = self._input_embeddings(input_ids, inputs_embeds)
        b, s, _ = x.shape
        if past is not None and len(past) != len(self.blocks):
            raise ValueError(f"past_key_values has {len(past)} layers, the model {len(self.blocks)}")
        if past is not None and past[0][0].shape[0] != b:
            raise ValueError(f"past_key_values is for batch {past[0][0].shape[0]}, the input has batch {b}")
        if past is not None:
            check_past(past, b, self.config.kv_n_heads, self.config.head_dim)
        past_len = past.get_seq_length() if past is not None else 0
        attention_mask = check_attention_mask(attention_mask, b, past_len + s, x.device)
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
        if past_len == 0 and (attention_mask is None or bool(attention_mask.all())):
            mask = CausalMask(b, s, x.device)
        else:
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

    def forward_paged(self, input_ids: torch.Tensor, step: PagedBatch) -> torch.Tensor:
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
