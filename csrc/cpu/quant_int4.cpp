// mpt_lite int4: group-wise (32 along in_features) symmetric 4-bit weights. Layout: quant_formats.h.
#include <cmath>

#include "cpu/quant_formats.h"
#include "cpu/thread_pool.h"

namespace mpt {

void quantize_int4(const float* w, int64_t N, int64_t K, uint8_t* packed, uint16_t* scales) {
  const int64_t G = int4_groups(K);
  parallel_for(N, 1, [&](int64_t n0, int64_t n1) {
    float v[kInt4Group];
    for (int64_t n = n0; n < n1; ++n) {
      for (int64_t g = 0; g < G; ++g) {
        float amax = 0.f, maxv = 0.f;
        for (int j = 0; j < kInt4Group; ++j) {
          const int64_t k = g * kInt4Group + j;
          v[j] = k < K ? w[n * K + k] : 0.f;
          if (std::fabs(v[j]) > amax) {  // first of equal magnitudes wins, like torch.argmax
            amax = std::fabs(v[j]);
            maxv = v[j];
          }
        }
        const uint16_t h = half_bits(maxv / -8.0f);  // the stored scale; the codes use it rounded
        const float d = half_to_float(h);
        const float id = d != 0.f ? 1.0f / d : 0.f;
        scales[n * G + g] = h;
        uint8_t* out = packed + (n * G + g) * 16;
        for (int j = 0; j < 16; ++j) {
          auto q = [&](float x) {
            float t = std::floor(x * id + 8.5f);
            return static_cast<uint8_t>(std::fmin(15.f, std::fmax(0.f, t)));
          };
          out[j] = static_cast<uint8_t>(q(v[j]) | q(v[j + 16]) << 4);
        }
      }
    }
  });
}

void dequantize_rows_int4(const uint8_t* packed, const uint16_t* scales, int64_t K, const int64_t* rows, int64_t nrows,
                          float* out) {
  const int64_t G = int4_groups(K);
  for (int64_t i = 0; i < nrows; ++i) {
    const int64_t n = rows[i];
    for (int64_t k = 0; k < K; ++k) {
      const int64_t g = k / kInt4Group, j = k % kInt4Group;
      uint8_t b = packed[(n * G + g) * 16 + (j & 15)];
      int q = j < 16 ? (b & 15) : (b >> 4);
      out[i * K + k] = static_cast<float>(q - 8) * half_to_float(scales[n * G + g]);
    }
  }
}

void dequantize_int4(const uint8_t* packed, const uint16_t* scales, int64_t N, int64_t K, float* out) {
  parallel_for(N, 1, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) dequantize_rows_int4(packed, scales, K, &n, 1, out + n * K);
  });
}

void matmul_int4(const float* x, int64_t M, int64_t K, const uint8_t* packed, const uint16_t* scales, int64_t N,
                 const float* bias, float* y, bool q8, bool bf16, bool rows8) {
  QWeight w{QFormat::Int4, N, K, 0, packed, nullptr, scales, rows8};
  qmatmul(w, x, M, bias, y, q8, bf16);
}

}  // namespace mpt
