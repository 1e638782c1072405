"""The only door to the compiled extension (mpt_lite._C): typed argument checks, then dispatch by
device to the CPU or CUDA kernels. `reference` holds the plain-torch mirror of every op."""
from __future__ import annotations

from .attention_ops import (KV_CACHE_DTYPES, Q4_GROUP, alibi_pruning, alibi_pruning_stats, attach_device_copy, cache_shapes,
                            paged_attention_decode, paged_attention_prefill, set_alibi_pruning, use_alibi_pruning,
                            write_kv_cache)
from .bandwidth import default_read_bytes, last_level_cache_bytes, read_bandwidth, read_buffer_bandwidth
from .decode_step import DecodePlan
from .dense_attention import causal_alibi_attention
from .checks import FLOAT_DTYPES, check_blocksize, check_tensor, ptr
from .extension import (CUDA_GEMV_MAX_M, NO_CUDA_BUILD, amx_enabled, amx_int8_enabled, amx_supported, cpu_features,
                        cuda_available, cuda_built, current_isa, num_threads, set_amx, set_isa, set_num_threads, supported_isas,
                        use_amx, use_isa)
from .layouts import (AMX_MIN_ROWS, INT4_GROUP, INT4_GROUPS, INT4_SCALE_DTYPE, NF4_BLOCKSIZE, NF4_CODE, NF4_INT8, NF4_INT_MAX, Q8_BLOCK,
                      Q8_GEMM_MIN_K, Q8_MAX_ROWS, check_int4_group, int4_group_of, int4_groups, int4_half_scales, nf4_code, nf4_q8_ok, use_bf16, use_q8)
from .quant_ops import (bf16_operands, dequantize_int4, dequantize_int8, dequantize_nf4, dequantize_rows_int4,
                        dequantize_rows_int8, dequantize_rows_nf4, int4_from_rows8, int4_to_rows8, int4_unit_scales,
                        int8_from_rows8,
                        int8_to_rows8, nf4_from_rows8, nf4_to_rows8, matmul_int4, matmul_int8, matmul_nf4,
                        quantize_int4, quantize_int8, quantize_nf4, rows8_preferred)
from .int6_ops import INT6_GROUP, dequantize_int6, dequantize_rows_int6, int6_row_bytes, matmul_int6, quantize_int6
from .search_ops import search_quantize_int4, search_quantize_nf4

__all__ = [
    "KV_CACHE_DTYPES", "Q4_GROUP", "attach_device_copy", "cache_shapes", "paged_attention_decode", "paged_attention_prefill", "write_kv_cache",
    "alibi_pruning", "alibi_pruning_stats", "set_alibi_pruning", "use_alibi_pruning",
    "default_read_bytes", "last_level_cache_bytes", "read_bandwidth", "read_buffer_bandwidth",
    "DecodePlan", "causal_alibi_attention",
    "FLOAT_DTYPES", "check_blocksize", "check_tensor", "ptr",
    "CUDA_GEMV_MAX_M", "NO_CUDA_BUILD", "cpu_features", "cuda_available", "cuda_built", "current_isa",
    "num_threads", "set_isa", "set_num_threads", "supported_isas", "use_isa",
    "amx_enabled", "amx_int8_enabled", "amx_supported", "set_amx", "use_amx", "AMX_MIN_ROWS", "use_bf16", "bf16_operands",
    "INT4_GROUP", "INT4_GROUPS", "INT4_SCALE_DTYPE", "NF4_BLOCKSIZE", "NF4_CODE", "NF4_INT8", "NF4_INT_MAX", "Q8_BLOCK", "Q8_GEMM_MIN_K", "Q8_MAX_ROWS",
    "check_int4_group", "int4_group_of", "int4_groups", "int4_half_scales", "int4_unit_scales", "nf4_code", "nf4_q8_ok", "use_q8",
    "dequantize_int4", "dequantize_int8", "dequantize_nf4", "dequantize_rows_int4", "dequantize_rows_int8",
    "dequantize_rows_nf4", "matmul_int4", "matmul_int8", "matmul_nf4", "quantize_int4", "quantize_int8",
    "quantize_nf4", "search_quantize_int4", "search_quantize_nf4",
    "int4_from_rows8", "int4_to_rows8", "int8_from_rows8", "int8_to_rows8", "nf4_from_rows8", "nf4_to_rows8",
    "rows8_preferred",
    "INT6_GROUP", "dequantize_int6", "dequantize_rows_int6", "int6_row_bytes", "matmul_int6", "quantize_int6",
]
