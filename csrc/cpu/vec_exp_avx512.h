// exp(x) on 16 floats for the AVX-512 kernels (include only from *_avx512.cpp files): x = n ln2 + r,
// |r| <= ln2 / 2, e^r by Cephes' degree-6 polynomial (FMA), times 2^n by scalef (so results that
// underflow to subnormals or zero and overflow to inf come out right). Within 2 ulp of exp.
#pragma once
#include <immintrin.h>

#include "cpu/exp_constants.h"

namespace mpt::avx512_math {

inline __m512 exp16(__m512 x) {
  x = _mm512_min_ps(_mm512_set1_ps(89.0f), _mm512_max_ps(_mm512_set1_ps(-104.0f), x));  // NaN passes
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(kLog2e)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Hi), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Lo), r);
  __m512 p = _mm512_set1_ps(kExpPoly[0]);
  for (int k = 1; k < 6; ++k) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kExpPoly[k]));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r);
  return _mm512_scalef_ps(_mm512_add_ps(p, _mm512_set1_ps(1.0f)), n);
}

}  // namespace mpt::avx512_math
