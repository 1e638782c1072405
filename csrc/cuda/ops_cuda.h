// The CUDA kernels' host entry points (csrc/cuda/*.cu). Plain C++: bindings.cpp includes this
// without CUDA headers. Every pointer is a device pointer unless its name ends in _host; every
// call runs on `device` and enqueues on `stream` (torch.cuda.current_stream().cuda_stream,
// handed over by ops.py as an integer), asynchronously. Formats and layouts are those of
// csrc/cpu/quant_formats.h and csrc/cpu/attention.h.
//
// Errors: bad arguments and launch configurations throw std::invalid_argument (ValueError in
// Python); other CUDA errors throw std::runtime_error (RuntimeError).
#pragma once
#include <cstdint>

#include "cpu/attention.h"

namespace mpt::cuda {

int device_count();

struct Launch {
  int device = 0;
  uintptr_t stream = 0;
};

// fmt: 0 int8 (data = cb, scale = scb), 1 nf4 (packed, absmax, blocksize), 2 int4 (packed, scales as
// IEEE half bits); scb / absmax are float32.
void quantize_int8(Launch l, const float* w, int64_t N, int64_t K, int8_t* cb, float* scb);
void quantize_nf4(Launch l, const float* w, int64_t numel, int64_t blocksize, uint8_t* packed, float* absmax);
void quantize_int4(Launch l, const float* w, int64_t N, int64_t K, uint8_t* packed, uint16_t* scales);
void dequantize(Launch l, int fmt, const void* data, const void* scale, int64_t N, int64_t K, int64_t blocksize,
                float* out);
void dequantize_rows(Launch l, int fmt, const void* data, const void* scale, int64_t N, int64_t K,
                     int64_t blocksize, const int64_t* rows, int64_t nrows, float* out);

// Rows [row0, row0 + nrows) of W's matmul operand as bfloat16 bits into out [nrows, K] (int8: the
// codes; nf4 / int4: dequantized values): the prefill path multiplies it with cuBLAS through torch.
void operand_bf16(Launch l, int fmt, const void* data, const void* scale, int64_t N, int64_t K, int64_t blocksize,
                  int64_t row0, int64_t nrows, uint16_t* out);

// y [M, N] = x [M, K] @ W^T (+ bias): M <= kGemvMaxM runs the GEMV kernel (float32 throughout,
// equal to ops.ref_matmul_* to float32 rounding); larger M the tensor-core GEMM (x and W's
// operands rounded to bfloat16, float32 accumulation; see ops.ref_matmul_bf16_operands).
constexpr int64_t kGemvMaxM = 8;
void qmatmul(Launch l, int fmt, const float* x, int64_t M, const void* data, const void* scale, int64_t N,
             int64_t K, int64_t blocksize, const float* bias, float* y);

// slots_host: a host copy of slot_mapping, checked against the cache before the launch.
void write_kv_cache(Launch l, const float* k, const float* v, int64_t n_tokens, const int64_t* slots,
                    const int64_t* slots_host, const KvCacheView& cache);

// a: device pointers; a_host: the same arguments with host copies of block_tables,
// context_lens and query_start_loc (checked as the CPU kernels check them, and read for the
// launch geometry). n_rows: query tokens (decode: num_seqs). workspace: device float32 scratch of
// at least paged_attention_workspace(...) elements (0 for short contexts), allocated by the
// caller (torch's caching allocator, on the same stream), so no allocation happens here.
int64_t paged_attention_workspace(bool decode, const AttnArgs& a_host, int64_t n_rows, const KvCacheView& cache);
void paged_attention(Launch l, bool decode, const AttnArgs& a, const AttnArgs& a_host, int64_t n_rows,
                     const KvCacheView& cache, float* workspace, int64_t workspace_size);

}  // namespace mpt::cuda
