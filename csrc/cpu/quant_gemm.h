// Integer GEMM tiles for many x rows (prefill, large batches): y = x @ W^T (+ bias) with x quantized
// to q8 blocks (Q8Rows' arithmetic) and int8 / int4 / nf4 weights (nf4: its codes as kNf4Int8 by a byte
// shuffle, absmax / kNf4IntMax per block, where nf4_q8_ok), on register tiles of VNNI dot products. A blocked
// driver (quant_gemm_driver.h) runs the ISA's packing and micro-kernels.
//
// Used for M > kGemmMinRows on CPUs with AVX-512 VNNI (on AVX2 every format takes the weight panels of
// quant_q8_panels_avx2.cpp instead, 1.2-1.5x these tiles' AVX2 version for int8, which they replaced;
// quant_matmul.cpp dispatches). On
// AVX-512 every int8 / int4 output is computed in exactly the per-block order of the q8_wide kernel
// (4-16 rows, quant_matmul_avx512.cpp): per step of 16 blocks of 32 k, one int32 lane per block (x codes of the
// block, offset by -128 or -8 times their sum, dotted with the unsigned weight bytes), converted to
// float and multiply-added with the block's scale into a 16-lane float chain, steps in order, then one
// _mm512_reduce_add_ps. So a row's result does not depend on how many rows share the call (M 4 .. any;
// nf4: M 17 .. any, its 1-16 row kernel sums 128 k a step).
//
// Cache blocking comes from the caches the machine reports (gemm_cache_sizes), never constants:
//   KC (steps of 512 k per pass): a register tile's weight rows for one pass fill at most half of L1d;
//   MC (x rows per block): the packed x block of one pass fills at most half of L2;
//   NC (weight rows per block): its float accumulators (NC x MC x 64 bytes) and packed weight panel
//   each stay within a quarter of L2. L3 is not used for a block size: x block, panel and
//   accumulators all live in L2, and the weights stream from memory or L3 once per x block.
#pragma once
#include <cstdint>

#include "cpu/quant_formats.h"

namespace mpt {

constexpr int64_t kGemmMinRows = 16;  // more rows than this take the GEMM tiles (fewer: q8_rows / q8_wide)

struct CacheSizes {
  int64_t l1d, l2, l3;  // bytes, per core for l1d and l2
};
// cpu_cache_bytes (cache_sizes.h: /sys, else sysconf), else 32 KiB / 1 MiB / 8 MiB; read once.
const CacheSizes& gemm_cache_sizes();

struct GemmBlocking {
  int64_t kc, mc, nc;  // steps of 512 k; x rows; weight rows
};
// S: steps of 512 k in K; nr, mr: register tile; threads: workers that share the (n, m) blocks.
GemmBlocking gemm_blocking(const CacheSizes& c, int64_t M, int64_t N, int64_t S, int nr, int mr, int threads);

// x float32 [M, K]; quantizes x itself (vectorised, same codes and scales as quantize_q8).
// nf4 weights need nf4_q8_ok(K, blocksize) (else std::invalid_argument).
void qgemm_q8_avx512(const QWeight& w, const float* x, int64_t M, const float* bias, float* y);

// bf16 operands on AMX tiles (quant_gemm_amx.cpp; call only where amx_enabled()): x and the decoded
// weight (int8: its codes) rounded to bfloat16, float32 sums, times row_factor, plus bias: what
// ref_matmul_bf16_operands computes. Any M, N, K, any nf4 blocksize.
void qgemm_bf16_amx(const QWeight& w, const float* x, int64_t M, const float* bias, float* y);

// q8 activations on AMX-INT8 tiles (quant_q8_amx.cpp; call only where amx_int8_enabled()): Q8Rows'
// codes and scales, int8 / int4 / nf4 (nf4_q8_ok) weights as signed int8 codes, block dots summed in
// order per output, so a row's result depends on neither the thread count nor M within each of its two
// layouts (up to kAmxQ8PairRows x rows: two blocks a product; more: one). 1 .. kAmxQ8MaxRows x rows;
// qmatmul sends it amx_q8_min_rows(format) .. kAmxQ8MaxRows: from there on it beat the q8_rows / q8_wide
// kernels on the 1.3B shapes (int8 from 4 rows; int4 / nf4, whose vpdpbusd kernels read half the bytes,
// from 8; docs/benchmarks.md, "AMX-INT8"), and up to 32 rows the bf16 AMX GEMM (layouts.AMX_MIN_ROWS = 33).
constexpr int64_t kAmxQ8MaxRows = 32, kAmxQ8PairRows = 8;
static inline int64_t amx_q8_min_rows(QFormat f) { return f == QFormat::Int8 ? 4 : 8; }
void qmatmul_q8_amx(const QWeight& w, const float* x, int64_t M, const float* bias, float* y);

}  // namespace mpt
