// GELU with a vectorised erf (AVX2 + FMA), the same formula as the AVX-512 variant: erf(|z|) =
// 1 - t (a1 + t (a2 + ... + t a5)) exp(-z^2), t = 1 / (1 + p |z|) (Abramowitz & Stegun 7.1.26), sign
// restored. The tail goes through a padded copy.
#include <immintrin.h>

#include <algorithm>

#include "cpu/activations.h"
#include "cpu/vec_math_avx2.h"

namespace mpt {
namespace {

inline __m256 gelu8(__m256 v) {
  const __m256 one = _mm256_set1_ps(1.0f), sign = _mm256_set1_ps(-0.0f);
  const __m256 z = _mm256_mul_ps(v, _mm256_set1_ps(0.7071067811865476f)), az = _mm256_andnot_ps(sign, z);
  const __m256 t = _mm256_div_ps(one, _mm256_fmadd_ps(_mm256_set1_ps(kErfP), az, one));
  __m256 poly = _mm256_fmadd_ps(_mm256_set1_ps(kErfA[4]), t, _mm256_set1_ps(kErfA[3]));
  poly = _mm256_fmadd_ps(poly, t, _mm256_set1_ps(kErfA[2]));
  poly = _mm256_fmadd_ps(poly, t, _mm256_set1_ps(kErfA[1]));
  poly = _mm256_fmadd_ps(poly, t, _mm256_set1_ps(kErfA[0]));
  poly = _mm256_mul_ps(poly, t);
  const __m256 e = avx2_math::exp8(_mm256_sub_ps(_mm256_setzero_ps(), _mm256_mul_ps(az, az)));
  const __m256 erf = _mm256_or_ps(_mm256_fnmadd_ps(poly, e, one), _mm256_and_ps(z, sign));
  return _mm256_mul_ps(_mm256_mul_ps(v, _mm256_set1_ps(0.5f)), _mm256_add_ps(one, erf));
}

}  // namespace

void gelu_avx2(float* x, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, gelu8(_mm256_loadu_ps(x + i)));
  if (i < n) {
    alignas(32) float t[8] = {};
    std::copy(x + i, x + n, t);
    _mm256_store_ps(t, gelu8(_mm256_load_ps(t)));
    std::copy(t, t + (n - i), x + i);
  }
}

}  // namespace mpt
