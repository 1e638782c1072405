// int8 per-row symmetric weights (bitsandbytes CB/SCB): quantize and dequantize. Layout: quant_formats.h.
#include <cmath>
#include <cstring>

#include "cpu/load_vectors.h"
#include "cpu/quant_formats.h"
#include "cpu/thread_pool.h"

namespace mpt {

namespace {

// Quantizing runs at load time over every weight: written with vector types (load_vectors.h) and without
// libm calls (std::fmax and std::nearbyint kept the old loop scalar: 8 ns a weight, 10 s of an int8 load of a
// 1.3B). The same IEEE operations in every clone, so every build gives the same codes as ref_quantize_int8.
typedef int8_t v8c __attribute__((vector_size(8)));

MPT_INLINE v8f load8(const float* p) {
  v8f v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

MPT_INLINE v8f abs8(v8f x) { return reinterpret_cast<v8f>(reinterpret_cast<v8i>(x) & 0x7fffffff); }

// v clamped to [-127, 127], rounded half to even; NaN gives -127, as fmin(127, fmax(-127, nearbyint(NaN))) did.
MPT_INLINE v8i code8(v8f v) {
  const v8f lo = v8f{} - 127.f, hi = v8f{} + 127.f;
  v = v >= lo ? v : lo;
  v = v <= hi ? v : hi;
  return __builtin_convertvector(round_even8(v), v8i);
}

MPT_LOAD_CLONES void quantize_int8_rows(const float* w, int64_t n0, int64_t n1, int64_t K, int8_t* cb, float* scb) {
  for (int64_t n = n0; n < n1; ++n) {
    const float* row = w + n * K;
    // the largest |w| (NaN ignored, as std::fmax ignores it)
    v8f m = v8f{};
    int64_t k = 0;
    for (; k + 8 <= K; k += 8) {
      const v8f a = abs8(load8(row + k));
      m = a > m ? a : m;
    }
    float amax = 0.f;
    for (int j = 0; j < 8; ++j) amax = m[j] > amax ? m[j] : amax;
    for (; k < K; ++k) {
      const float a = std::fabs(row[k]);
      amax = a > amax ? a : amax;
    }
    scb[n] = amax;
    // A zero row: 127 / 0 = inf and 0 * inf = NaN; store zeros, as bitsandbytes' codes would be
    // meaningless there too (its dequantize gives 0 * 0 = 0 either way).
    const float inv = amax > 0.f ? 127.0f / amax : 0.f;
    int8_t* out = cb + n * K;
    for (k = 0; k + 8 <= K; k += 8) {
      const v8c c = __builtin_convertvector(code8(load8(row + k) * inv), v8c);
      std::memcpy(out + k, &c, sizeof(c));
    }
    for (; k < K; ++k) {
      float v = row[k] * inv;
      v = v >= -127.f ? v : -127.f;
      v = v <= 127.f ? v : 127.f;
      out[k] = static_cast<int8_t>(static_cast<int>((v + 12582912.0f) - 12582912.0f));
    }
  }
}

}  // namespace

void quantize_int8(const float* w, int64_t N, int64_t K, int8_t* cb, float* scb) {
  parallel_for(N, 1, [&](int64_t n0, int64_t n1) { quantize_int8_rows(w, n0, n1, K, cb, scb); });
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
