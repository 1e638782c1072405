// AVX-512 (F/BW/BF16) attention kernels; tails use masked loads and stores.
#include <immintrin.h>

#include "cpu/attention_kernel.h"
#include "cpu/vec_exp_avx512.h"

namespace mpt::attention_avx512 {
namespace {

inline __mmask16 tail(int r) { return __mmask16((1u << r) - 1u); }
inline __mmask16 upto(int n, int i) { return n - i >= 16 ? __mmask16(0xffff) : tail(n - i); }

// 16 cache elements (masked) widened to float32 in registers.
inline __m512 load16(const float* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }
inline __m512 load16(const uint16_t* p, __mmask16 m) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p)), 16));
}
inline __m512 load16(const int8_t* p, __mmask16 m) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(m, p)));
}

using avx512_math::exp16;

struct Ops {
  // sc[j] = q . k_j for n keys, D values each, k_j at k + j * st.
  template <class T>
  static void scores(const float* q, const T* k, int64_t st, int n, int D, float* sc) {
    for (int j = 0; j < n; ++j) {
      const T* kj = k + j * st;
      __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
      int i = 0;
      for (; i + 32 <= D; i += 32) {
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(q + i), load16(kj + i, 0xffff), s0);
        s1 = _mm512_fmadd_ps(_mm512_loadu_ps(q + i + 16), load16(kj + i + 16, 0xffff), s1);
      }
      for (; i < D; i += 16) {
        const __mmask16 m = upto(D, i);
        s0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, q + i), load16(kj + i, m), s0);
      }
      sc[j] = _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
    }
  }

  // acc += sum_j p[j] v_j, 16 columns at a time held in registers across the keys.
  template <class T>
  static void accum(const float* p, const T* v, int64_t st, int n, int D, float* acc) {
    for (int i = 0; i < D; i += 16) {
      const __mmask16 m = upto(D, i);
      __m512 a0 = _mm512_maskz_loadu_ps(m, acc + i), a1 = _mm512_setzero_ps();
      int j = 0;
      for (; j + 2 <= n; j += 2) {
        a0 = _mm512_fmadd_ps(_mm512_set1_ps(p[j]), load16(v + j * st + i, m), a0);
        a1 = _mm512_fmadd_ps(_mm512_set1_ps(p[j + 1]), load16(v + (j + 1) * st + i, m), a1);
      }
      if (j < n) a0 = _mm512_fmadd_ps(_mm512_set1_ps(p[j]), load16(v + j * st + i, m), a0);
      _mm512_mask_storeu_ps(acc + i, m, _mm512_add_ps(a0, a1));
    }
  }
  static float vmax(const float* x, int n) {
    __m512 m = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
    for (int i = 0; i < n; i += 16) m = _mm512_max_ps(m, _mm512_mask_loadu_ps(m, upto(n, i), x + i));
    return _mm512_reduce_max_ps(m);
  }
  // x[j] = exp(x[j] - mx); returns their sum.
  static float exp_sum(float* x, int n, float mx) {
    const __m512 vm = _mm512_set1_ps(mx);
    __m512 s = _mm512_setzero_ps();
    for (int i = 0; i < n; i += 16) {
      const __mmask16 k = upto(n, i);
      const __m512 e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + i), vm));
      _mm512_mask_storeu_ps(x + i, k, e);
      s = _mm512_mask_add_ps(s, k, s, e);
    }
    return _mm512_reduce_add_ps(s);
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
  static void f16_to_f32(const uint16_t* s, float* d, int n) {
    for (int i = 0; i < n; i += 16) {
      const __mmask16 m = n - i >= 16 ? __mmask16(0xffff) : tail(n - i);
      _mm512_mask_storeu_ps(d + i, m, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, s + i)));
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
