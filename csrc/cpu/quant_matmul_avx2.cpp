// AVX2 + FMA variant of the quantized matmul (8-float vectors); the algorithm is in quant_simd.h.
#include <immintrin.h>

#include "cpu/quant_formats.h"

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
  static float hsum(F v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }

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
void qmatmul_avx2(const QWeight& w, const float* x, int64_t M, const float* bias, float* y) {
  avx2::qmatmul_simd(w, x, M, bias, y);
}
}  // namespace mpt
