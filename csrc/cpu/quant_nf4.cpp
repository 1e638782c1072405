// bitsandbytes NF4 weights: quantize and dequantize. Layout: quant_formats.h.
#include <algorithm>
#include <cmath>

#include "cpu/quant_formats.h"
#include "cpu/thread_pool.h"

namespace mpt {

const float kNf4Code[16] = {
    -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
    -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
    0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
    0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f};

// round(kNf4IntMax * kNf4Code[q]) (ops.NF4_INT8 holds the same values, computed from the float table).
const int8_t kNf4Int8[16] = {-63, -44, -33, -25, -18, -12, -6, 0, 5, 10, 16, 21, 28, 35, 46, 63};

// Nearest code by counting the midpoints below v (ops.ref_quantize_nf4 mirrors this exactly).
static inline uint8_t nf4_code_of(float v) {
  int q = 0;
  for (int i = 0; i < 15; ++i) q += v > 0.5f * (kNf4Code[i] + kNf4Code[i + 1]);
  return static_cast<uint8_t>(q);
}

void quantize_nf4(const float* w, int64_t numel, int64_t blocksize, uint8_t* packed, float* absmax) {
  const int64_t nblocks = (numel + blocksize - 1) / blocksize;
  // Blocks are even-sized (checked by ops.py), so no byte is shared by two blocks.
  parallel_for(nblocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t f0 = b * blocksize, f1 = std::min(numel, f0 + blocksize);
      float amax = 0.f;
      for (int64_t f = f0; f < f1; ++f) amax = std::fmax(amax, std::fabs(w[f]));
      absmax[b] = amax;
      for (int64_t f = f0; f < f1; f += 2) {
        float v0 = amax > 0.f ? w[f] / amax : 0.f;
        float v1 = amax > 0.f && f + 1 < f1 ? w[f + 1] / amax : 0.f;
        uint8_t lo = f + 1 < f1 ? nf4_code_of(v1) : 0;  // the pad nibble of an odd-sized weight is 0
        packed[f >> 1] = static_cast<uint8_t>(nf4_code_of(v0) << 4 | lo);
      }
    }
  });
}

void dequantize_nf4(const uint8_t* packed, const float* absmax, int64_t numel, int64_t blocksize, float* out) {
  parallel_for(numel, 64, [&](int64_t f0, int64_t f1) {
    for (int64_t f = f0; f < f1; ++f) {
      uint8_t b = packed[f >> 1];
      out[f] = kNf4Code[(f & 1) ? (b & 15) : (b >> 4)] * absmax[f / blocksize];
    }
  });
}

void dequantize_rows_nf4(const uint8_t* packed, const float* absmax, int64_t K, int64_t blocksize,
                         const int64_t* rows, int64_t nrows, float* out) {
  for (int64_t i = 0; i < nrows; ++i) {
    const int64_t f0 = rows[i] * K;
    for (int64_t k = 0; k < K; ++k) {
      const int64_t f = f0 + k;
      uint8_t b = packed[f >> 1];
      out[i * K + k] = kNf4Code[(f & 1) ? (b & 15) : (b >> 4)] * absmax[f / blocksize];
    }
  }
}

void matmul_nf4(const float* x, int64_t M, int64_t K, const uint8_t* packed, const float* absmax, int64_t N,
                int64_t blocksize, const float* bias, float* y) {
  matmul_nf4(x, M, K, packed, absmax, N, blocksize, bias, y, false);
}

void matmul_nf4(const float* x, int64_t M, int64_t K, const uint8_t* packed, const float* absmax, int64_t N,
                int64_t blocksize, const float* bias, float* y, bool q8, bool bf16, bool rows8) {
  QWeight w{QFormat::Nf4, N, K, blocksize, packed, absmax, nullptr, rows8};
  qmatmul(w, x, M, bias, y, q8 && nf4_q8_ok(K, blocksize), bf16);
}

}  // namespace mpt
