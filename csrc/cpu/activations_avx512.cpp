// GELU with a vectorised erf (AVX-512): erf(|z|) = 1 - t (a1 + t (a2 + ... + t a5)) exp(-z^2),
// t = 1 / (1 + p |z|) (Abramowitz & Stegun 7.1.26), sign restored.
#include <immintrin.h>

#include "cpu/activations.h"
#include "cpu/vec_exp_avx512.h"

namespace mpt {

void gelu_avx512(float* x, int64_t n) {
  const __m512 p = _mm512_set1_ps(kErfP), one = _mm512_set1_ps(1.0f), half = _mm512_set1_ps(0.5f);
  const __m512 a1 = _mm512_set1_ps(kErfA[0]), a2 = _mm512_set1_ps(kErfA[1]), a3 = _mm512_set1_ps(kErfA[2]),
               a4 = _mm512_set1_ps(kErfA[3]), a5 = _mm512_set1_ps(kErfA[4]), rsqrt2 = _mm512_set1_ps(0.7071067811865476f);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = n - i >= 16 ? __mmask16(0xffff) : __mmask16((1u << (n - i)) - 1u);
    const __m512 v = _mm512_maskz_loadu_ps(m, x + i);
    const __m512 z = _mm512_mul_ps(v, rsqrt2), az = _mm512_abs_ps(z);
    const __m512 t = _mm512_div_ps(one, _mm512_fmadd_ps(p, az, one));
    __m512 poly = _mm512_fmadd_ps(a5, t, a4);
    poly = _mm512_fmadd_ps(poly, t, a3);
    poly = _mm512_fmadd_ps(poly, t, a2);
    poly = _mm512_fmadd_ps(poly, t, a1);
    poly = _mm512_mul_ps(poly, t);
    const __m512 e = avx512_math::exp16(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_mul_ps(az, az)));
    const __m512 erf_abs = _mm512_fnmadd_ps(poly, e, one);
    // sign of z onto erf(|z|)
    const __m512 erf = _mm512_or_ps(erf_abs, _mm512_and_ps(z, _mm512_set1_ps(-0.0f)));
    _mm512_mask_storeu_ps(x + i, m, _mm512_mul_ps(_mm512_mul_ps(v, half), _mm512_add_ps(one, erf)));
  }
}

}  // namespace mpt
