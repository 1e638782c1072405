// AVX-512 variant of the quantized matmul (16-float vectors); the algorithm is in quant_simd.h.
#include <immintrin.h>

#include "cpu/quant_formats.h"

namespace mpt {
namespace avx512 {

struct V {
  using F = __m512;
  static constexpr int NR = 12;  // register tile: NR weight rows x 2 vectors of x rows
  static constexpr int L = 16;
  static F zero() { return _mm512_setzero_ps(); }
  static F load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, F v) { _mm512_storeu_ps(p, v); }
  static F set1(float a) { return _mm512_set1_ps(a); }
  static F fma(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
  static F add(F a, F b) { return _mm512_add_ps(a, b); }
  static float hsum(F v) { return _mm512_reduce_add_ps(v); }

  // Kernel order inside a 32-chunk: NF4 bytes give [k even..., k odd...]; the others are in order.
  static int kpos(QFormat f, int i) { return f == QFormat::Nf4 ? (i < 16 ? 2 * i : 2 * (i - 16) + 1) : i; }

  static void decode_int8(const uint8_t* p, F* out) {
    out[0] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
    out[1] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16))));
  }
  static void decode_int4(const uint8_t* p, float d, F* out) {
    const __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    const F vd = _mm512_set1_ps(d), m8d = _mm512_set1_ps(-8.0f * d);  // q*d - 8d rounds once: (q-8)*d
    const __m512 qm8 = _mm512_setr_ps(-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7);
    out[0] = _mm512_mul_ps(_mm512_permutexvar_ps(b, qm8), vd);  // low nibble: vpermps reads bits 0-3
    out[1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(b, 4)), vd, m8d);
  }
  static void decode_nf4(const uint8_t* p, float absmax, F* out) {
    const __m512 code = _mm512_loadu_ps(kNf4Code), s = _mm512_set1_ps(absmax);
    const __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    out[0] = _mm512_mul_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(b, 4), code), s);
    out[1] = _mm512_mul_ps(_mm512_permutexvar_ps(b, code), s);  // vpermps reads only the low 4 bits
  }
};

}  // namespace avx512
}  // namespace mpt

#define QSIMD_NS avx512
#include "cpu/quant_simd.h"

namespace mpt {
void qmatmul_avx512(const QWeight& w, const float* x, int64_t M, const float* bias, float* y) {
  avx512::qmatmul_simd(w, x, M, bias, y);
}
}  // namespace mpt
