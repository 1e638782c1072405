// AVX2 + FMA + F16C attention kernels.
#include <immintrin.h>

#include "cpu/attention_kernel.h"

namespace mpt::attention_avx2 {
namespace {

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

struct Ops {
  static float dot(const float* a, const float* b, int n) {
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    int i = 0;
    for (; i + 16 <= n; i += 16) {
      s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
      s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
    }
    for (; i + 8 <= n; i += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    float s = hsum(_mm256_add_ps(s0, s1));
    for (; i < n; ++i) s += a[i] * b[i];
    return s;
  }
  static void axpy(float a, const float* x, float* y, int n) {
    const __m256 va = _mm256_set1_ps(a);
    int i = 0;
    for (; i + 8 <= n; i += 8)
      _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; ++i) y[i] += a * x[i];
  }
  static void scale(float* y, float a, int n) {
    const __m256 va = _mm256_set1_ps(a);
    int i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_mul_ps(va, _mm256_loadu_ps(y + i)));
    for (; i < n; ++i) y[i] *= a;
  }
  static void bf16_to_f32(const uint16_t* s, float* d, int n) {
    int i = 0;
    for (; i + 8 <= n; i += 8) {
      __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i)));
      _mm256_storeu_ps(d + i, _mm256_castsi256_ps(_mm256_slli_epi32(w, 16)));
    }
    for (; i < n; ++i) d[i] = attn_detail::bf16_to_f32(s[i]);
  }
  static void f16_to_f32(const uint16_t* s, float* d, int n) {
    int i = 0;
    for (; i + 8 <= n; i += 8)
      _mm256_storeu_ps(d + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i))));
    for (; i < n; ++i) d[i] = attn_detail::f16_to_f32(s[i]);
  }
  static void i8_to_f32(const int8_t* s, float scale, float* d, int n) {
    const __m256 vs = _mm256_set1_ps(scale);
    int i = 0;
    for (; i + 8 <= n; i += 8) {
      __m256i w = _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(s + i)));
      _mm256_storeu_ps(d + i, _mm256_mul_ps(_mm256_cvtepi32_ps(w), vs));
    }
    for (; i < n; ++i) d[i] = float(s[i]) * scale;
  }
  static void f32_to_bf16(const float* s, uint16_t* d, int n) {
    for (int i = 0; i < n; ++i) d[i] = attn_detail::f32_to_bf16(s[i]);
  }
  static void f32_to_f16(const float* s, uint16_t* d, int n) {
    int i = 0;
    for (; i + 8 <= n; i += 8)
      _mm_storeu_si128(reinterpret_cast<__m128i*>(d + i),
                       _mm256_cvtps_ph(_mm256_loadu_ps(s + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    for (; i < n; ++i) d[i] = attn_detail::f32_to_f16(s[i]);
  }
  static float absmax(const float* x, int n) {
    const __m256 mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 m = _mm256_setzero_ps();
    int i = 0;
    for (; i + 8 <= n; i += 8) m = _mm256_max_ps(m, _mm256_and_ps(mask, _mm256_loadu_ps(x + i)));
    alignas(32) float t[8];
    _mm256_store_ps(t, m);
    float r = 0;
    for (float v : t) r = std::max(r, v);
    for (; i < n; ++i) r = std::max(r, std::fabs(x[i]));
    return r;
  }
  static void quantize_i8(const float* x, float s, int8_t* q, int n) {
    for (int i = 0; i < n; ++i) q[i] = int8_t(std::min(127.0f, std::max(-127.0f, std::nearbyint(x[i] / s))));
  }
};

}  // namespace
}  // namespace mpt::attention_avx2

MPT_ATTENTION_ENTRY_POINTS(attention_avx2)
