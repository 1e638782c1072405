"""The model as plain torch modules, driven by MptConfig: layers, MptModel, the four heads, their
outputs, the simple cache, and the PagedAttention interface the engine implements."""
from __future__ import annotations

from .attention_backend import PagedAttention, PagedBatch
from .base import MptModel, MptPreTrainedModel, TiedEmbedding
from .cache import MptCache
from .heads import (TASKS, MptForCausalLM, MptForQuestionAnswering, MptForSequenceClassification,
                    MptForTokenClassification)

__all__ = ["PagedAttention", "PagedBatch", "MptModel", "MptPreTrainedModel", "TiedEmbedding", "MptCache", "TASKS",
           "MptForCausalLM", "MptForQuestionAnswering", "MptForSequenceClassification", "MptForTokenClassification"]
