"""Quantized weights: the formats (formats.py, one object per format) and the layers that hold
them (layers.py)."""
from __future__ import annotations

from .formats import (DEFAULT_4BIT, EMBEDDING_ONLY, FORMATS, FOUR_BIT, QUANT_TYPES, WeightFormat, check_embedding_bits, check_quant_type,
                      embedding_quant_type, quant_type_for, weight_format)
from .layers import (FORMAT_VERSION, QuantEmbedding, QuantLinear, QuantWeight, held_state_dict, quant_metadata,
                     quantized_modules)


def quantize(quant_type: str, w, blocksize: int = 64) -> dict:
    """The code buffers of a float weight [N, K] in quant_type."""
    return weight_format(quant_type).quantize(w, blocksize)


__all__ = ["DEFAULT_4BIT", "EMBEDDING_ONLY", "FORMATS", "FOUR_BIT", "QUANT_TYPES", "WeightFormat", "check_embedding_bits",
           "check_quant_type", "embedding_quant_type", "quant_type_for", "weight_format",
           "FORMAT_VERSION", "QuantEmbedding", "QuantLinear", "QuantWeight", "held_state_dict", "quant_metadata",
           "quantized_modules",
           "quantize"]
