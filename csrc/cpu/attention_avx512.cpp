// AVX-512 (F/BW/BF16) attention kernels; tails use masked loads and stores.
#include <immintrin.h>

#include "cpu/attention_kernel.h"

namespace mpt::attention_avx512 {
namespace {

inline __mmask16 tail(int r) { return __mmask16((1u << r) - 1u); }

struct Ops {
  static float dot(const float* a, const float* b, int n) {
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    int i = 0;
    for (; i + 32 <= n; i += 32) {
      s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
      s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), s1);
    }
    for (; i + 16 <= n; i += 16) s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
    if (i < n) {
      const __mmask16 m = tail(n - i);
      s1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), s1);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
  }
  static void axpy(float a, const float* x, float* y, int n) {
    const __m512 va = _mm512_set1_ps(a);
    int i = 0;
    for (; i + 16 <= n; i += 16)
      _mm512_storeu_ps(y + i, _mm512_fmadd_ps(va, _mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i)));
    if (i < n) {
      const __mmask16 m = tail(n - i);
      _mm512_mask_storeu_ps(y + i, m, _mm512_fmadd_ps(va, _mm512_maskz_loadu_ps(m, x + i), _mm512_maskz_loadu_ps(m, y + i)));
    }
  }
  static void scale(float* y, float a, int n) {
    const __m512 va = _mm512_set1_ps(a);
    int i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, _mm512_mul_ps(va, _mm512_loadu_ps(y + i)));
    if (i < n) {
      const __mmask16 m = tail(n - i);
      _mm512_mask_storeu_ps(y + i, m, _mm512_mul_ps(va, _mm512_maskz_loadu_ps(m, y + i)));
    }
  }
  static void bf16_to_f32(const uint16_t* s, float* d, int n) {
    for (int i = 0; i < n; i += 16) {
      const __mmask16 m = n - i >= 16 ? __mmask16(0xffff) : tail(n - i);
      __m512i w = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, s + i));
      _mm512_mask_storeu_ps(d + i, m, _mm512_castsi512_ps(_mm512_slli_epi32(w, 16)));
    }
  }
  static void f16_to_f32(const uint16_t* s, float* d, int n) {
    for (int i = 0; i < n; i += 16) {
      const __mmask16 m = n - i >= 16 ? __mmask16(0xffff) : tail(n - i);
      _mm512_mask_storeu_ps(d + i, m, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, s + i)));
    }
  }
  static void i8_to_f32(const int8_t* s, float scale, float* d, int n) {
    const __m512 vs = _mm512_set1_ps(scale);
    for (int i = 0; i < n; i += 16) {
      const __mmask16 m = n - i >= 16 ? __mmask16(0xffff) : tail(n - i);
      __m512i w = _mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(m, s + i));
      _mm512_mask_storeu_ps(d + i, m, _mm512_mul_ps(_mm512_cvtepi32_ps(w), vs));
    }
  }
  static void f32_to_bf16(const float* s, uint16_t* d, int n) {
    for (int i = 0; i < n; i += 16) {
      const __mmask16 m = n - i >= 16 ? __mmask16(0xffff) : tail(n - i);
      __m256bh h = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, s + i));
      __m256i hi;
      std::memcpy(&hi, &h, sizeof(hi));
      _mm256_mask_storeu_epi16(d + i, m, hi);
    }
  }
  static void f32_to_f16(const float* s, uint16_t* d, int n) {
    for (int i = 0; i < n; i += 16) {
      const __mmask16 m = n - i >= 16 ? __mmask16(0xffff) : tail(n - i);
      __m256i h = _mm512_cvtps_ph(_mm512_maskz_loadu_ps(m, s + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      _mm256_mask_storeu_epi16(d + i, m, h);
    }
  }
  static float absmax(const float* x, int n) {
    __m512 m = _mm512_setzero_ps();
    for (int i = 0; i < n; i += 16) {
      const __mmask16 k = n - i >= 16 ? __mmask16(0xffff) : tail(n - i);
      m = _mm512_max_ps(m, _mm512_abs_ps(_mm512_maskz_loadu_ps(k, x + i)));
    }
    return _mm512_reduce_max_ps(m);
  }
  static void quantize_i8(const float* x, float s, int8_t* q, int n) {
    const __m512 vs = _mm512_set1_ps(s), lo = _mm512_set1_ps(-127.0f), hi = _mm512_set1_ps(127.0f);
    for (int i = 0; i < n; i += 16) {
      const __mmask16 k = n - i >= 16 ? __mmask16(0xffff) : tail(n - i);
      __m512 r = _mm512_roundscale_ps(_mm512_div_ps(_mm512_maskz_loadu_ps(k, x + i), vs),
                                      _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      r = _mm512_min_ps(hi, _mm512_max_ps(lo, r));
      _mm_mask_storeu_epi8(q + i, k, _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(r)));
    }
  }
};

}  // namespace
}  // namespace mpt::attention_avx512

MPT_ATTENTION_ENTRY_POINTS(attention_avx512)
