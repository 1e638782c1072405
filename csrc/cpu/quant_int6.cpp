// int6 (quant_int6.h): the quantizer, dequantization, the portable matmul and the run-time dispatcher.
#include "cpu/quant_int6.h"

#include <vector>

#include "cpu/cpu_features.h"
#include "cpu/thread_pool.h"

namespace mpt {
namespace {

// Code q (0..63) of k = 32g + j in group g's 24 bytes.
inline int int6_code(const uint8_t* grp, int j) {
  const int lo = (j < 16 ? grp[j] : grp[j - 16] >> 4) & 15;
  return lo | ((grp[16 + (j & 7)] >> (2 * (j >> 3))) & 3) << 4;
}

// Rows of W in decode_chunk runs from a shared counter (for_row_chunks): each thread streams long runs of bytes.
template <class F>
void row_chunks(int64_t N, F&& f) {
  struct Rows {
    F& f;
    auto make_worker() { return [this](int64_t n0, int64_t n1) { f(n0, n1); }; }
  } rows{f};
  for_row_chunks(N, decode_chunk(N), rows);
}

}  // namespace

void quantize_int6(const float* w, int64_t N, int64_t K, uint8_t* codes, uint16_t* scales) {
  const int64_t G = int4_groups(K);
  parallel_for(N, 1, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n)
      for (int64_t g = 0; g < G; ++g) {
        float v[32];
        const GroupScale gs = group_scale(w + n * K + g * 32, K - g * 32, 32, 32.0f, v);
        const float id = gs.inv;
        scales[n * G + g] = gs.half;
        uint8_t* out = codes + (n * G + g) * kInt6GroupBytes;
        for (int i = 0; i < kInt6GroupBytes; ++i) out[i] = 0;
        for (int j = 0; j < 32; ++j) {
          float t = v[j] * id;
          t = t < -32.f ? -32.f : t > 31.f ? 31.f : t;
          // adding and removing 1.5 * 2^23 rounds |t| <= 32 half to even, as torch.round; NaN becomes 0
          const float r = t == t ? (t + 12582912.0f) - 12582912.0f : 0.f;
          const int q = static_cast<int>(r) + 32;
          out[j & 15] |= static_cast<uint8_t>((q & 15) << (j < 16 ? 0 : 4));
          out[16 + (j & 7)] |= static_cast<uint8_t>((q >> 4) << (2 * (j >> 3)));
        }
      }
  });
}

void dequantize_rows_int6(const uint8_t* codes, const uint16_t* scales, int64_t K, const int64_t* rows, int64_t nrows,
                          float* out) {
  const int64_t G = int4_groups(K);
  for (int64_t i = 0; i < nrows; ++i) {
    const int64_t n = rows[i];
    for (int64_t g = 0; g < G; ++g) {
      const uint8_t* grp = codes + (n * G + g) * kInt6GroupBytes;
      const float d = half_to_float(scales[n * G + g]);
      for (int64_t k = g * 32; k < K && k < g * 32 + 32; ++k)
        out[i * K + k] = static_cast<float>(int6_code(grp, static_cast<int>(k - g * 32)) - 32) * d;
    }
  }
}

void dequantize_int6(const uint8_t* codes, const uint16_t* scales, int64_t N, int64_t K, float* out) {
  parallel_for(N, 1, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) dequantize_rows_int6(codes, scales, K, &n, 1, out + n * K);
  });
}

void matmul_int6_rows_generic(const Int6Weight& w, const Q8Rows& x, const float* bias, float* y, int64_t n0,
                              int64_t n1) {
  const int64_t G = w.G, Kp = G * 32;
  std::vector<int8_t> row(static_cast<size_t>(Kp));
  for (int64_t n = n0; n < n1; ++n) {
    for (int64_t g = 0; g < G; ++g)
      for (int j = 0; j < 32; ++j)
        row[g * 32 + j] = static_cast<int8_t>(int6_code(w.codes + (n * G + g) * kInt6GroupBytes, j) - 32);
    for (int64_t m = 0; m < x.M; ++m) {
      const int8_t* q = x.q.data() + m * Kp;
      float acc = 0.f;
      for (int64_t g = 0; g < G; ++g) {
        int32_t dot = 0;
        for (int j = 0; j < 32; ++j) dot += int32_t(row[g * 32 + j]) * q[g * 32 + j];
        acc += half_to_float(w.scales[n * G + g]) * x.d[m * G + g] * static_cast<float>(dot);
      }
      y[m * w.N + n] = acc + (bias ? bias[n] : 0.f);
    }
  }
}

void int6_x_avx512(const Q8Rows& x, Int6XAvx512& out) {
  const int64_t G = x.KB, P = (G + 1) / 2, Kp = G * 32;
  out.M = x.M, out.P = P;
  out.q.assign(static_cast<size_t>(x.M * P * 64), 0);
  out.off.assign(static_cast<size_t>(x.M * P * 16), 0);
  out.dg = x.d;
  q8_block_sums(x, -32, out.offg);
  for (int64_t m = 0; m < x.M; ++m)
    for (int64_t p = 0; p < P; ++p)
      for (int L = 0; L < 16; ++L) {
        const int64_t g = 2 * p + L % 2, i = (m * P + p) * 16 + L;
        if (g >= G) continue;
        const int64_t k = g * 32 + 4 * (L % 8 / 2) + 16 * (L / 8);
        int32_t s = 0;
        for (int b = 0; b < 4; ++b) {
          const int8_t c = x.q[m * Kp + k + b];
          out.q[i * 4 + b] = c;
          s += c;
        }
        out.off[i] = -32 * s;
      }
}

void matmul_int6(const float* x, int64_t M, int64_t K, const uint8_t* codes, const uint16_t* scales, int64_t N,
                 const float* bias, float* y) {
  if (M <= 0 || N <= 0) return;
  Q8Rows xq;
  quantize_q8(x, M, K, xq);
  const Int6Weight w{N, K, int4_groups(K), codes, scales};
  switch (current_isa()) {
#if MPT_LITE_X86_SIMD
    case Isa::Avx512: {
      Int6XAvx512 xa;
      int6_x_avx512(xq, xa);
      return row_chunks(N, [&](int64_t n0, int64_t n1) { matmul_int6_rows_avx512(w, xa, bias, y, n0, n1); });
    }
    case Isa::Avx2: return row_chunks(N, [&](int64_t n0, int64_t n1) { matmul_int6_rows_avx2(w, xq, bias, y, n0, n1); });
#endif
    default: return row_chunks(N, [&](int64_t n0, int64_t n1) { matmul_int6_rows_generic(w, xq, bias, y, n0, n1); });
  }
}

}  // namespace mpt
