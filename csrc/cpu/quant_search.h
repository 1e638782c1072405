// Quantizers that search each block's scale for the least squared error (llama.cpp's
// make_qx_quants idea) instead of taking the absmax; they write the same layouts as
// quantize_int4 / quantize_nf4 (quant_formats.h). The plain-torch mirror, with the algorithm and
// the trial scales, is ref_search_quantize_int4 / _nf4 in mpt_lite/kernels/reference.py.
#pragma once
#include <cstdint>

namespace mpt {

void search_quantize_int4(const float* w, int64_t N, int64_t K, uint8_t* packed, uint16_t* scales,
                          int64_t group = 32);  // half scales, one per group of k (int4_group_ok)
void search_quantize_nf4(const float* w, int64_t numel, int64_t blocksize, uint8_t* packed, float* absmax);

}  // namespace mpt
