// AVX2 + FMA variant of the quantized matmul (8-float vectors); the algorithm is in quant_simd.h.
#include <immintrin.h>

#include "cpu/quant_formats.h"
#include "cpu/quant_gemm.h"
#include "cpu/vec_math_avx2.h"

namespace mpt {
namespace avx2 {

struct V {
  using F = __m256;
  static constexpr int NR = 6;  // register tile: NR weight rows x 2 vectors of x rows
  static constexpr int L = 8;
  static F zero() { return _mm256_setzero_ps(); }
  static F load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, F v) { _mm256_storeu_ps(p, v); }
  static F set1(float a) { return _mm256_set1_ps(a); }
  static F fma(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
  static F add(F a, F b) { return _mm256_add_ps(a, b); }
  static float hsum(F v) { return avx2_math::hsum8(v); }

  // Kernel order inside a 32-chunk: NF4 gives, per 16, [k even..., k odd...]; the others are in order.
  static int kpos(QFormat f, int i) {
    if (f != QFormat::Nf4) return i;
    const int h = i / 16, j = i % 16;
    return 16 * h + (j < 8 ? 2 * j : 2 * (j - 8) + 1);
  }

  static __m256i bytes8(const uint8_t* p) {
    return _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
  }
  static void decode_int8(const uint8_t* p, F* out) {
    for (int i = 0; i < 4; ++i)
      out[i] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + 8 * i))));
  }
  static void widen_halves(const uint16_t* h, int64_t n, float* out) {  // F16C
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
      _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(h + i))));
    for (; i < n; ++i) out[i] = _cvtsh_ss(h[i]);
  }
  static void decode_int4(const uint8_t* p, float d, F* out) {
    const F vd = _mm256_set1_ps(d), m8d = _mm256_set1_ps(-8.0f * d);
    const __m256i lo4 = _mm256_set1_epi32(15);
    const __m256i b0 = bytes8(p), b1 = bytes8(p + 8);
    out[0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(b0, lo4)), vd, m8d);
    out[1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(b1, lo4)), vd, m8d);
    out[2] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(b0, 4)), vd, m8d);
    out[3] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(b1, 4)), vd, m8d);
  }
  // 16-entry table from two 8-entry permutes; uses bits 0-3 of each lane (higher bits ignored).
  static F lookup(__m256i q, F lo, F hi) {
    const F a = _mm256_permutevar8x32_ps(lo, q), b = _mm256_permutevar8x32_ps(hi, q);
    return _mm256_blendv_ps(a, b, _mm256_castsi256_ps(_mm256_slli_epi32(q, 28)));
  }
  static void decode_nf4(const uint8_t* p, float absmax, F* out) {
    const F lo = _mm256_loadu_ps(kNf4Code), hi = _mm256_loadu_ps(kNf4Code + 8), s = _mm256_set1_ps(absmax);
    for (int h = 0; h < 2; ++h) {
      const __m256i b = bytes8(p + 8 * h);
      out[2 * h] = _mm256_mul_ps(lookup(_mm256_srli_epi32(b, 4), lo, hi), s);
      out[2 * h + 1] = _mm256_mul_ps(lookup(b, lo, hi), s);  // lookup reads only bits 0-3
    }
  }
};

}  // namespace avx2
}  // namespace mpt

#define QSIMD_NS avx2
#include "cpu/quant_simd.h"

namespace mpt {
namespace avx2 {

// ---- q8 activations x int8 weights (int4 / nf4: quant_q8_pairs_avx2.cpp): one 32-block per step,
// pmaddubsw (u8 x s8 pairs to int16) then pmaddwd by ones (int16 pairs to int32). The unsigned operand
// must be >= 0: the weight's magnitude goes there and its sign onto x (pair sums at most 2*128*127).
template <int MB>
void q8_rows(const QWeight& w, const Q8Rows& x, int64_t m0, const float* bias, float* y, int64_t n0, int64_t n1) {
  constexpr int U = MB == 1 ? 2 : 1;
  const int64_t KB = x.KB, Kp = KB * 32, K = w.K, N = w.N;
  const __m256i ones = _mm256_set1_epi16(1);
  const int8_t* xq = x.q.data() + m0 * Kp;
  const float* xd = x.d.data() + m0 * KB;
  for (int64_t n = n0; n < n1; ++n) {
    __m256 acc[MB][U];
    for (int m = 0; m < MB; ++m)
      for (int u = 0; u < U; ++u) acc[m][u] = _mm256_setzero_ps();
    const uint8_t* wrow = w.data + n * K;
    auto step = [&](__m256i raw, int64_t b, int u) __attribute__((always_inline)) {
      const __m256i aw = _mm256_abs_epi8(raw);
      for (int m = 0; m < MB; ++m) {
        const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + m * Kp + b * 32));
        const __m256i i = _mm256_madd_epi16(_mm256_maddubs_epi16(aw, _mm256_sign_epi8(xv, raw)), ones);
        acc[m][u] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i), _mm256_set1_ps(xd[m * KB + b]), acc[m][u]);
      }
    };
    auto load = [&](int64_t b) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wrow + b * 32)); };
    // Full blocks first, with no tail test inside: a partial block's copy (a call) in the loop made the
    // compiler keep acc on the stack, a store-to-load chain per block (q8_rows<1> at ~8 cycles a block).
    const int64_t full = K / 32;
    int64_t b = 0;
    for (; b + U <= full; b += U) {
      _mm_prefetch(reinterpret_cast<const char*>(wrow + b * 32 + kPrefetchBytes), _MM_HINT_T0);
      for (int u = 0; u < U; ++u) step(load(b + u), b + u, u);
    }
    for (; b < full; ++b) step(load(b), b, 0);
    if (b < KB) {  // the tail block: zero codes against x codes of 0
      alignas(32) uint8_t tmp[32] = {};
      for (int64_t k = b * 32; k < K; ++k) tmp[k - b * 32] = wrow[k];
      step(_mm256_load_si256(reinterpret_cast<const __m256i*>(tmp)), b, 0);
    }
    const float rf = row_factor(w, n), bi = bias ? bias[n] : 0.f;
    for (int m = 0; m < MB; ++m) {
      __m256 s = acc[m][0];
      for (int u = 1; u < U; ++u) s = _mm256_add_ps(s, acc[m][u]);
      y[(m0 + m) * N + n] = V::hsum(s) * rf + bi;
    }
  }
}

void q8_run_int8(const QWeight& w, const Q8Rows& x, const float* bias, float* y) {
  struct Rows {
    const QWeight& w;
    const Q8Rows& x;
    const float* bias;
    float* y;
    auto make_worker() {
      return [this](int64_t t0, int64_t t1) { tile(t0, t1); };
    }
    void tile(int64_t t0, int64_t t1) const {
      for (int64_t m0 = 0; m0 < x.M; m0 += 4) {
        switch (std::min<int64_t>(4, x.M - m0)) {
          case 1: q8_rows<1>(w, x, m0, bias, y, t0, t1); break;
          case 2: q8_rows<2>(w, x, m0, bias, y, t0, t1); break;
          case 3: q8_rows<3>(w, x, m0, bias, y, t0, t1); break;
          default: q8_rows<4>(w, x, m0, bias, y, t0, t1); break;
        }
      }
    }
  };
  for_row_chunks(w.N, decode_chunk(w.N), Rows{w, x, bias, y});
}

}  // namespace avx2

void qmatmul_avx2(const QWeight& w, const float* x, int64_t M, const float* bias, float* y) {
  avx2::qmatmul_simd(w, x, M, bias, y);
}

// x rows from which the weight panels beat the row kernels on AVX2 (a 1.3B layer's four matmuls, q8, 2
// threads, Zen 3; docs/benchmarks.md): int8's row kernel re-reads each weight row per 4 x rows and widens
// every product, so at 6 rows the panels already take 0.55-0.7x its time; the int4 / nf4 pair kernel
// shares a load's decode among 4 x rows and wins up to 12 rows, the panels from 16 (0.8-1.0x).
constexpr int64_t kPanelMinRowsInt8 = 6, kPanelMinRows4Bit = 16;

void qmatmul_q8_avx2(const QWeight& w, const Q8Rows& x, const float* bias, float* y) {
  if (x.M >= (w.fmt == QFormat::Int8 ? kPanelMinRowsInt8 : kPanelMinRows4Bit)) return qmatmul_q8_panels_avx2(w, x, bias, y);
  if (w.fmt == QFormat::Int8) return avx2::q8_run_int8(w, x, bias, y);
  qmatmul_q8_pairs_avx2(w, x, bias, y);
}
}  // namespace mpt
