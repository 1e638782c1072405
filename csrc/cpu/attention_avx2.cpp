// AVX2 + FMA + F16C attention kernels.
#include <immintrin.h>

#include "cpu/attention_kernel.h"
#include "cpu/vec_math_avx2.h"

namespace mpt::attention_avx2 {
namespace {

using avx2_math::hsum8;

// 8 cache elements widened to float32 in registers; one element for the tails.
inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const uint16_t* p) {
  return _mm256_castsi256_ps(
      _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))), 16));
}
inline __m256 load8(const int8_t* p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}
inline float load1(const float* p) { return *p; }
inline float load1(const uint16_t* p) { return attn_detail::bf16_to_f32(*p); }
inline float load1(const int8_t* p) { return float(*p); }

using avx2_math::exp8;

// Lane j of the result = the sum of the 8 lanes of v[j] (an 8 x 8 transpose folded into the adds).
inline __m256 hsum8x8(const __m256* v) {
  const __m256 t0 = _mm256_hadd_ps(v[0], v[1]), t1 = _mm256_hadd_ps(v[2], v[3]);
  const __m256 t2 = _mm256_hadd_ps(v[4], v[5]), t3 = _mm256_hadd_ps(v[6], v[7]);
  const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);  // per 128-bit half
  return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

// sc[0, 8) = q . k_j for 8 keys of D values (D a multiple of 8): one accumulator per key, so the
// FMAs of different keys overlap instead of waiting on one or two dependency chains.
template <class T>
inline void scores8(const float* q, const T* k, int64_t st, int D, float* sc) {
  __m256 a[8];
  for (int j = 0; j < 8; ++j) a[j] = _mm256_setzero_ps();
  for (int i = 0; i < D; i += 8) {
    const __m256 qi = _mm256_loadu_ps(q + i);
    for (int j = 0; j < 8; ++j) a[j] = _mm256_fmadd_ps(qi, load8(k + j * st + i), a[j]);
  }
  _mm256_storeu_ps(sc, hsum8x8(a));
}

// acc[0, 64) += sum_j p[j] v_j[0, 64): key-major, the 8 output vectors in registers, so each value
// row is read once and contiguously (a column-major walk strides a token's row per load, and the
// rows of one head sit 2-4 KiB apart: a few L1 sets that the block's other rows keep evicting).
template <class T>
inline void accum64(const float* p, const T* v, int64_t st, int n, float* acc) {
  __m256 a[8];
  for (int c = 0; c < 8; ++c) a[c] = _mm256_loadu_ps(acc + 8 * c);
  for (int j = 0; j < n; ++j) {
    const __m256 pj = _mm256_broadcast_ss(p + j);
    const T* vj = v + int64_t(j) * st;
    for (int c = 0; c < 8; ++c) a[c] = _mm256_fmadd_ps(pj, load8(vj + 8 * c), a[c]);
  }
  for (int c = 0; c < 8; ++c) _mm256_storeu_ps(acc + 8 * c, a[c]);
}

// 4-bit rows (attention.h): the 32 values of a group as 4 x 8 floats (c - 8), values 0-7, 8-15 (low
// nibbles), 16-23, 24-31 (high nibbles).
inline void q4_group(const uint8_t* p, __m256* out) {
  const __m128i low = _mm_set1_epi8(15), b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  const __m128i lo = _mm_and_si128(b, low), hi = _mm_and_si128(_mm_srli_epi16(b, 4), low);
  const __m256 eight = _mm256_set1_ps(8.0f);
  out[0] = _mm256_sub_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo)), eight);
  out[1] = _mm256_sub_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8))), eight);
  out[2] = _mm256_sub_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi)), eight);
  out[3] = _mm256_sub_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8))), eight);
}

// One 4-bit key's partial sums (8 lanes) against q: per group q . (c - 8) times the group's scale.
inline __m256 q4_key(const float* q, const uint8_t* k, const float* ks, int ng) {
  __m256 a = _mm256_setzero_ps();
  for (int g = 0; g < ng; ++g) {
    __m256 v[4];
    q4_group(k + 16 * g, v);
    const float* qg = q + 32 * g;
    __m256 t = _mm256_mul_ps(_mm256_loadu_ps(qg), v[0]);
    t = _mm256_fmadd_ps(_mm256_loadu_ps(qg + 8), v[1], t);
    t = _mm256_fmadd_ps(_mm256_loadu_ps(qg + 16), v[2], t);
    t = _mm256_fmadd_ps(_mm256_loadu_ps(qg + 24), v[3], t);
    a = _mm256_fmadd_ps(t, _mm256_set1_ps(ks[g]), a);
  }
  return a;
}

struct Ops {
  // plain loads for the rows wanted next (attention_kernel.h, prefetch_rows)
  static constexpr bool kTileRows = false;  // no prefill tile kernel (attend_range's rows one by one)
  static constexpr bool kTouchAhead = true;
  // sc[j] = q . k_j for n keys, D values each, k_j at k + j * st.
  template <class T>
  static void scores(const float* q, const T* k, int64_t st, int n, int D, float* sc) {
    int j = 0;
    if (D % 8 == 0)
      for (; j + 8 <= n; j += 8) scores8(q, k + j * st, st, D, sc + j);
    for (; j < n; ++j) {
      const T* kj = k + j * st;
      __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
      int i = 0;
      for (; i + 16 <= D; i += 16) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), load8(kj + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i + 8), load8(kj + i + 8), s1);
      }
      for (; i + 8 <= D; i += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), load8(kj + i), s0);
      float s = hsum8(_mm256_add_ps(s0, s1));
      for (; i < D; ++i) s += q[i] * load1(kj + i);
      sc[j] = s;
    }
  }

  // One group of 32 values to 4-bit codes (attention_kernel.h, quantize_group_q4: the same floats).
  static float quantize_q4(const float* x, uint8_t* q) {
    const __m256 sign = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 v[4], m = _mm256_setzero_ps();
    for (int i = 0; i < 4; ++i) v[i] = _mm256_loadu_ps(x + 8 * i), m = _mm256_max_ps(m, _mm256_and_ps(sign, v[i]));
    alignas(32) float t[8];
    _mm256_store_ps(t, m);
    float amax = 0.0f;
    for (float f : t) amax = std::max(amax, f);
    if (amax == 0.0f || amax != amax) return attn_detail::quantize_group_q4(x, q);  // zeros (and NaN): scalar
    int first = 0;
    while (std::fabs(x[first]) != amax) ++first;
    const float d = x[first] / -8.0f;  // the first value of largest magnitude
    const __m256 vd = _mm256_set1_ps(d), half = _mm256_set1_ps(8.5f), top = _mm256_set1_ps(15.0f);
    __m256i c[4];
    for (int i = 0; i < 4; ++i)
      c[i] = _mm256_cvttps_epi32(_mm256_min_ps(top, _mm256_floor_ps(_mm256_add_ps(_mm256_div_ps(v[i], vd), half))));
    // values 0-15 (c[0], c[1]) in the low nibbles, 16-31 (c[2], c[3]) in the high ones
    const __m256i lo16 = _mm256_permute4x64_epi64(_mm256_packs_epi32(c[0], c[1]), 0xd8);
    const __m256i hi16 = _mm256_permute4x64_epi64(_mm256_packs_epi32(c[2], c[3]), 0xd8);
    const __m256i bytes = _mm256_permute4x64_epi64(_mm256_packus_epi16(lo16, hi16), 0xd8);  // lo 0-15 | hi 0-15
    const __m128i lo = _mm256_castsi256_si128(bytes), hi = _mm256_extracti128_si256(bytes, 1);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q), _mm_or_si128(lo, _mm_slli_epi16(hi, 4)));
    return d;
  }

  // 4-bit rows read in registers (attention_kernel.h: block_scores / block_values), 8 keys reduced together.
  static constexpr bool kQ4Rows = true;
  static bool q4_rows_ok(int D) { return D % kQ4Group == 0; }
  static void scores_q4(const attn_detail::Row& row, const uint8_t* k, const float* ks, int64_t st, int64_t sst, int n,
                        int D, float* sc) {
    const float* q = row.q;  // already rounded (attention_q4_query.h)
    const int ng = D / kQ4Group;
    int j = 0;
    for (; j + 8 <= n; j += 8) {
      __m256 a[8];
      for (int i = 0; i < 8; ++i) a[i] = q4_key(q, k + (j + i) * st, ks + (j + i) * sst, ng);
      _mm256_storeu_ps(sc + j, hsum8x8(a));
    }
    for (; j < n; ++j) sc[j] = hsum8(q4_key(q, k + j * st, ks + j * sst, ng));
  }
  // acc += sum_j p[j] v_j over 4-bit values: a group at a time (its 4 output vectors in registers) over the keys.
  static void accum_q4(const float* p, const uint8_t* v, const float* vs, int64_t st, int64_t sst, int n, int D,
                       float* acc) {
    for (int g = 0; g < D / kQ4Group; ++g) {
      float* ag = acc + 32 * g;
      __m256 a0 = _mm256_loadu_ps(ag), a1 = _mm256_loadu_ps(ag + 8), a2 = _mm256_loadu_ps(ag + 16),
             a3 = _mm256_loadu_ps(ag + 24);
      for (int j = 0; j < n; ++j) {
        __m256 x[4];
        q4_group(v + j * st + 16 * g, x);
        const __m256 w = _mm256_set1_ps(p[j] * vs[j * sst + g]);
        a0 = _mm256_fmadd_ps(w, x[0], a0), a1 = _mm256_fmadd_ps(w, x[1], a1);
        a2 = _mm256_fmadd_ps(w, x[2], a2), a3 = _mm256_fmadd_ps(w, x[3], a3);
      }
      _mm256_storeu_ps(ag, a0), _mm256_storeu_ps(ag + 8, a1), _mm256_storeu_ps(ag + 16, a2),
          _mm256_storeu_ps(ag + 24, a3);
    }
  }

  // acc += sum_j p[j] v_j.
  template <class T>
  static void accum(const float* p, const T* v, int64_t st, int n, int D, float* acc) {
    int i = 0;
    for (; i + 64 <= D; i += 64) accum64(p, v + i, st, n, acc + i);
    for (; i + 8 <= D; i += 8) {
      __m256 a0 = _mm256_loadu_ps(acc + i), a1 = _mm256_setzero_ps();
      int j = 0;
      for (; j + 2 <= n; j += 2) {
        a0 = _mm256_fmadd_ps(_mm256_set1_ps(p[j]), load8(v + j * st + i), a0);
        a1 = _mm256_fmadd_ps(_mm256_set1_ps(p[j + 1]), load8(v + (j + 1) * st + i), a1);
      }
      if (j < n) a0 = _mm256_fmadd_ps(_mm256_set1_ps(p[j]), load8(v + j * st + i), a0);
      _mm256_storeu_ps(acc + i, _mm256_add_ps(a0, a1));
    }
    for (; i < D; ++i)
      for (int j = 0; j < n; ++j) acc[i] += p[j] * load1(v + j * st + i);
  }
  static float vmax(const float* x, int n) {
    __m256 m = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
    int i = 0;
    for (; i + 8 <= n; i += 8) m = _mm256_max_ps(m, _mm256_loadu_ps(x + i));
    alignas(32) float t[8];
    _mm256_store_ps(t, m);
    float r = t[0];
    for (int k = 1; k < 8; ++k) r = std::max(r, t[k]);
    for (; i < n; ++i) r = std::max(r, x[i]);
    return r;
  }
  // x[j] = exp(x[j] - mx); returns their sum. The tail goes through a padded copy (its -inf lanes add 0).
  static float exp_sum(float* x, int n, float mx) {
    const __m256 vm = _mm256_set1_ps(mx);
    __m256 s = _mm256_setzero_ps();
    int i = 0;
    for (; i + 8 <= n; i += 8) {
      const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm));
      _mm256_storeu_ps(x + i, e);
      s = _mm256_add_ps(s, e);
    }
    if (i < n) {
      alignas(32) float t[8];
      for (int k = 0; k < 8; ++k) t[k] = i + k < n ? x[i + k] : -std::numeric_limits<float>::infinity();
      const __m256 e = exp8(_mm256_sub_ps(_mm256_load_ps(t), vm));
      _mm256_store_ps(t, e);
      for (int k = 0; i + k < n; ++k) x[i + k] = t[k];
      s = _mm256_add_ps(s, e);
    }
    return hsum8(s);
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
  static void f16_to_f32(const uint16_t* s, float* d, int n) {
    int i = 0;
    for (; i + 8 <= n; i += 8)
      _mm256_storeu_ps(d + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i))));
    for (; i < n; ++i) d[i] = attn_detail::f16_to_f32(s[i]);
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
  // A 4-bit row (attention.h) of D values: (code - 8) * its group's scale.
  static void dequant_q4(const uint8_t* q, const float* sc, float* d, int D) {
    const __m128i low = _mm_set1_epi8(15);
    const __m256i eight = _mm256_set1_epi32(8);
    for (int g = 0; g < D / kQ4Group; ++g, q += kQ4Group / 2, d += kQ4Group) {
      const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q));
      const __m128i nib[2] = {_mm_and_si128(b, low), _mm_and_si128(_mm_srli_epi16(b, 4), low)};
      const __m256 s = _mm256_set1_ps(sc[g]);
      for (int k = 0; k < 4; ++k) {  // values 8k .. 8k + 7 of the group
        const __m128i src = k & 1 ? _mm_srli_si128(nib[k >> 1], 8) : nib[k >> 1];
        const __m256i c = _mm256_sub_epi32(_mm256_cvtepu8_epi32(src), eight);
        _mm256_storeu_ps(d + 8 * k, _mm256_mul_ps(_mm256_cvtepi32_ps(c), s));
      }
    }
  }
  static void quantize_i8(const float* x, float s, int8_t* q, int n) {
    for (int i = 0; i < n; ++i) q[i] = int8_t(std::min(127.0f, std::max(-127.0f, std::nearbyint(x[i] / s))));
  }
};

}  // namespace
}  // namespace mpt::attention_avx2

MPT_ATTENTION_ENTRY_POINTS(attention_avx2)
