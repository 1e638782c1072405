// int6 matmul (quant_int6.h), AVX2: one group of 32 k a vector, x in Q8Rows' own order, 4 rows of W at a time.
#include <immintrin.h>

#include <vector>

#include "cpu/prefetch.h"
#include "cpu/quant_int6.h"

namespace mpt {

// The group's 32 codes (0..63), byte j holding k = j.
static inline __m256i int6_codes_avx2(const uint8_t* grp) {
  const __m128i nib = _mm_loadu_si128(reinterpret_cast<const __m128i*>(grp));
  const __m256i lo = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(nib, 4), nib), _mm256_set1_epi8(15));
  int64_t hb;
  __builtin_memcpy(&hb, grp + 16, 8);
  const __m256i h = _mm256_srlv_epi64(_mm256_set1_epi64x(hb), _mm256_setr_epi64x(0, 2, 4, 6));
  return _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(h, _mm256_set1_epi8(3)), 4));
}

static inline float hsum(__m256 v) {
  const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
  return _mm_cvtss_f32(_mm_add_ss(s2, _mm_movehdup_ps(s2)));
}

// Rows n0 .. n0 + R - 1 of W against x row m: the R rows share each load of x, as in the AVX-512 kernel, and
// a run of R rows ahead is prefetched (the R interleaved row streams are not what the hardware prefetchers follow).
template <int R>
void rows_tile(const Int6Weight& w, const Q8Rows& x, const int32_t* off, int64_t m, const float* bias, float* y,
               int64_t n0) {
  const int64_t G = w.G, row_bytes = G * kInt6GroupBytes;
  const __m256i ones = _mm256_set1_epi16(1);
  const uint8_t* codes = w.codes + n0 * row_bytes;
  const uint8_t* ahead = codes + R * row_bytes;
  const int8_t* xq = x.q.data() + m * G * 32;
  const float* xd = x.d.data() + m * G;
  __m256 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
  for (int64_t g = 0; g < G; ++g) {
    for (int l = 0; l < R * kInt6GroupBytes; l += 64) prefetch<3>(ahead + g * R * kInt6GroupBytes + l);
    const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + g * 32));
    const __m256i o = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(off + (m * G + g) * 8));
    for (int r = 0; r < R; ++r) {
      const __m256i c = int6_codes_avx2(codes + r * row_bytes + g * kInt6GroupBytes);
      const __m256i dot = _mm256_add_epi32(_mm256_madd_epi16(_mm256_maddubs_epi16(c, q), ones), o);
      acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_set1_ps(_cvtsh_ss(w.scales[(n0 + r) * G + g]) * xd[g]),
                               acc[r]);
    }
  }
  for (int r = 0; r < R; ++r) y[m * w.N + n0 + r] = hsum(acc[r]) + (bias ? bias[n0 + r] : 0.f);
}

void matmul_int6_rows_avx2(const Int6Weight& w, const Q8Rows& x, const float* bias, float* y, int64_t n0,
                           int64_t n1) {
  const int64_t G = w.G, M = x.M;
  const __m256i ones = _mm256_set1_epi16(1);
  // -32 x the sum of each 4 codes of x (the int32 lanes of a group's dot): brings back the codes' offset exactly
  std::vector<int32_t> off(static_cast<size_t>(M * G * 8));
  for (int64_t i = 0; i < M * G; ++i) {
    const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.q.data() + i * 32));
    const __m256i s = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(32), q), ones);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(off.data() + i * 8), _mm256_sub_epi32(_mm256_setzero_si256(), s));
  }
  // 64 rows at a time for every x row (they stay in L1 / L2 between x rows)
  for (int64_t r0 = n0; r0 < n1; r0 += 64) {
    const int64_t r1 = r0 + 64 < n1 ? r0 + 64 : n1;
    for (int64_t m = 0; m < M; ++m) {
      int64_t n = r0;
      for (; n + 4 <= r1; n += 4) rows_tile<4>(w, x, off.data(), m, bias, y, n);
      for (; n < r1; ++n) rows_tile<1>(w, x, off.data(), m, bias, y, n);
    }
  }
}

}  // namespace mpt
