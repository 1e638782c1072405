// mpt_lite int4: group-wise symmetric 4-bit weights, codes in units of 32 along in_features, one scale per
// group of 32 (or a larger power of two). Layout: quant_formats.h.
#include <cmath>
#include <vector>

#include "cpu/quant_formats.h"
#include "cpu/thread_pool.h"

namespace mpt {

void quantize_int4(const float* w, int64_t N, int64_t K, uint8_t* packed, uint16_t* scales, int64_t group) {
  const int64_t G = int4_groups(K), C = int4_groups(K, group), R = group / kInt4Group;
  parallel_for(N, 1, [&](int64_t n0, int64_t n1) {
    std::vector<float> v(static_cast<size_t>(group));
    for (int64_t n = n0; n < n1; ++n) {
      for (int64_t c = 0; c < C; ++c) {
        const GroupScale gs = group_scale(w + n * K + c * group, K - c * group, group, 8.0f, v.data());
        const float id = gs.inv;
        scales[n * C + c] = gs.half;
        for (int64_t u = 0; u < R && c * R + u < G; ++u) {
          uint8_t* out = packed + (n * G + c * R + u) * 16;
          const float* x = v.data() + u * kInt4Group;
          auto q = [&](float t) {
            t = std::floor(t * id + 8.5f);
            return static_cast<uint8_t>(std::fmin(15.f, std::fmax(0.f, t)));
          };
          for (int j = 0; j < 16; ++j) out[j] = static_cast<uint8_t>(q(x[j]) | q(x[j + 16]) << 4);
        }
      }
    }
  });
}

void dequantize_rows_int4(const uint8_t* packed, const uint16_t* scales, int64_t K, const int64_t* rows, int64_t nrows,
                          float* out, int64_t group) {
  const int64_t G = int4_groups(K), C = int4_groups(K, group);
  for (int64_t i = 0; i < nrows; ++i) {
    const int64_t n = rows[i];
    for (int64_t k = 0; k < K; ++k) {
      const int64_t g = k / kInt4Group, j = k % kInt4Group;
      uint8_t b = packed[(n * G + g) * 16 + (j & 15)];
      int q = j < 16 ? (b & 15) : (b >> 4);
      out[i * K + k] = static_cast<float>(q - 8) * half_to_float(scales[n * C + k / group]);
    }
  }
}

void dequantize_int4(const uint8_t* packed, const uint16_t* scales, int64_t N, int64_t K, float* out, int64_t group) {
  parallel_for(N, 1, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) dequantize_rows_int4(packed, scales, K, &n, 1, out + n * K, group);
  });
}

QWeight int4_with_unit_scales(const QWeight& w, std::vector<uint16_t>& scratch) {
  const int64_t G = int4_groups(w.K), C = int4_groups(w.K, w.group), R = w.group / kInt4Group;
  scratch.resize(static_cast<size_t>(w.N * G));
  if (!w.rows8) {
    parallel_for(w.N, 64, [&](int64_t n0, int64_t n1) {
      for (int64_t n = n0; n < n1; ++n)
        for (int64_t g = 0; g < G; ++g) scratch[n * G + g] = w.scale16[n * C + g / R];
    });
  } else {
    const int64_t S = w.N / 8;
    parallel_for(S, 8, [&](int64_t s0, int64_t s1) {
      for (int64_t n8 = s0; n8 < s1; ++n8)
        for (int64_t g = 0; g < G; ++g)
          for (int r = 0; r < 8; ++r)
            scratch[rows8_unit(n8, g, S, G) * 8 + r] = w.scale16[rows8_unit(n8, g / R, S, C) * 8 + r];
    });
  }
  QWeight e = w;
  e.scale16 = scratch.data(), e.group = kInt4Group;
  return e;
}

void matmul_int4(const float* x, int64_t M, int64_t K, const uint8_t* packed, const uint16_t* scales, int64_t N,
                 const float* bias, float* y, bool q8, bool bf16, bool rows8, int64_t group) {
  QWeight w{QFormat::Int4, N, K, 0, packed, nullptr, scales, rows8, group};
  qmatmul(w, x, M, bias, y, q8, bf16);
}

}  // namespace mpt
