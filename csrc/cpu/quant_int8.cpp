// int8 per-row symmetric weights (bitsandbytes CB/SCB): quantize and dequantize. Layout: quant_formats.h.
#include <cmath>
#include <cstring>

#include "cpu/quant_formats.h"
#include "cpu/thread_pool.h"

namespace mpt {

void quantize_int8(const float* w, int64_t N, int64_t K, int8_t* cb, float* scb) {
  parallel_for(N, 1, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      const float* row = w + n * K;
      float amax = 0.f;
      for (int64_t k = 0; k < K; ++k) amax = std::fmax(amax, std::fabs(row[k]));
      scb[n] = amax;
      // A zero row: 127 / 0 = inf and 0 * inf = NaN; store zeros, as bitsandbytes' codes would be
      // meaningless there too (its dequantize gives 0 * 0 = 0 either way).
      const float inv = amax > 0.f ? 127.0f / amax : 0.f;
      for (int64_t k = 0; k < K; ++k) {
        float q = std::nearbyint(row[k] * inv);  // round half to even, like torch.round
        cb[n * K + k] = static_cast<int8_t>(std::fmin(127.f, std::fmax(-127.f, q)));
      }
    }
  });
}

void dequantize_int8(const int8_t* cb, const float* scb, int64_t N, int64_t K, float* out) {
  parallel_for(N, 1, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n)
      for (int64_t k = 0; k < K; ++k)
        out[n * K + k] = (static_cast<float>(cb[n * K + k]) * scb[n]) * (1.0f / 127.0f);
  });
}

void dequantize_rows_int8(const int8_t* cb, const float* scb, int64_t K, const int64_t* rows, int64_t nrows,
                          float* out) {
  for (int64_t i = 0; i < nrows; ++i) dequantize_int8(cb + rows[i] * K, scb + rows[i], 1, K, out + i * K);
}

void matmul_int8(const float* x, int64_t M, int64_t K, const int8_t* cb, const float* scb, int64_t N,
                 const float* bias, float* y, bool q8, bool bf16, bool rows8) {
  QWeight w{QFormat::Int8, N, K, 0, reinterpret_cast<const uint8_t*>(cb), scb, nullptr, rows8};
  qmatmul(w, x, M, bias, y, q8, bf16);
}

}  // namespace mpt
