// AVX-512 (F/BW/BF16) attention kernels; tails use masked loads and stores.
#include <immintrin.h>

#include <algorithm>

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

// Lane j of the result = the sum of the 16 lanes of v[j] (a 16 x 16 transpose folded into the adds).
inline __m512 hsum16(const __m512* v) {
  __m512 w[4];
  for (int g = 0; g < 4; ++g) {
    const __m512* u = v + 4 * g;
    const __m512 t01 = _mm512_add_ps(_mm512_unpacklo_ps(u[0], u[1]), _mm512_unpackhi_ps(u[0], u[1]));
    const __m512 t23 = _mm512_add_ps(_mm512_unpacklo_ps(u[2], u[3]), _mm512_unpackhi_ps(u[2], u[3]));
    // each 128-bit lane: partial sums of u[0..3] over that lane
    w[g] = _mm512_add_ps(_mm512_shuffle_ps(t01, t23, _MM_SHUFFLE(1, 0, 1, 0)),
                         _mm512_shuffle_ps(t01, t23, _MM_SHUFFLE(3, 2, 3, 2)));
  }
  const __m512 y01 = _mm512_add_ps(_mm512_shuffle_f32x4(w[0], w[1], _MM_SHUFFLE(1, 0, 1, 0)),
                                   _mm512_shuffle_f32x4(w[0], w[1], _MM_SHUFFLE(3, 2, 3, 2)));
  const __m512 y23 = _mm512_add_ps(_mm512_shuffle_f32x4(w[2], w[3], _MM_SHUFFLE(1, 0, 1, 0)),
                                   _mm512_shuffle_f32x4(w[2], w[3], _MM_SHUFFLE(3, 2, 3, 2)));
  return _mm512_add_ps(_mm512_shuffle_f32x4(y01, y23, _MM_SHUFFLE(2, 0, 2, 0)),
                       _mm512_shuffle_f32x4(y01, y23, _MM_SHUFFLE(3, 1, 3, 1)));
}

// 16 x 16 floats transposed in registers: r[i] lane j becomes r[j] lane i.
inline void transpose16(__m512* r) {
  __m512 t[16], u[16];
  for (int i = 0; i < 16; i += 2) t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]), t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  for (int i = 0; i < 16; i += 4) {  // 128-bit lane q of u[i + e]: element e (+4q) of rows i .. i + 3
    u[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44), u[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xee);
    u[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44), u[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xee);
  }
  for (int g = 0; g < 16; g += 8)  // rows g .. g + 7: elements e, e + 8 (0x88) and e + 4, e + 12 (0xdd)
    for (int e = 0; e < 4; ++e)
      t[g + e] = _mm512_shuffle_f32x4(u[g + e], u[g + 4 + e], 0x88),
      t[g + 4 + e] = _mm512_shuffle_f32x4(u[g + e], u[g + 4 + e], 0xdd);
  for (int e = 0; e < 8; ++e)
    r[e] = _mm512_shuffle_f32x4(t[e], t[8 + e], 0x88), r[e + 8] = _mm512_shuffle_f32x4(t[e], t[8 + e], 0xdd);
}

// 16 elements of a cached row as float32 (f16 has its own conversion; uint16_t means bf16 in load16).
inline __m512 load_row16(const void* base, KvDtype dt, int64_t i) {
  switch (dt) {
    case KvDtype::F32: return _mm512_loadu_ps(static_cast<const float*>(base) + i);
    case KvDtype::BF16: return load16(static_cast<const uint16_t*>(base) + i, 0xffff);
    case KvDtype::F16:
      return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(base) + i)));
    case KvDtype::I8: return load16(static_cast<const int8_t*>(base) + i, 0xffff);
    case KvDtype::Q4: break;  // tile_rows takes 4-bit keys as packed float rows
  }
  return _mm512_setzero_ps();
}

// Scores of 4 query rows against 16 transposed keys (kt: D vectors, vector d = element d of the 16 keys):
// 2 chains a row (even and odd d), so 8 independent fmas cover the fma latency.
template <int NV>
inline void scores4_t(const float* const* q, const float* kt, __m512* out) {
  __m512 a[4][2];
  for (int r = 0; r < 4; ++r) a[r][0] = a[r][1] = _mm512_setzero_ps();
#pragma GCC unroll 4
  for (int d = 0; d < 16 * NV; d += 2) {
    const __m512 k0 = _mm512_loadu_ps(kt + d * 16), k1 = _mm512_loadu_ps(kt + (d + 1) * 16);
    for (int r = 0; r < 4; ++r) {
      a[r][0] = _mm512_fmadd_ps(_mm512_set1_ps(q[r][d]), k0, a[r][0]);
      a[r][1] = _mm512_fmadd_ps(_mm512_set1_ps(q[r][d + 1]), k1, a[r][1]);
    }
  }
  for (int r = 0; r < 4; ++r) out[r] = _mm512_add_ps(a[r][0], a[r][1]);
}

// sc[j] = the lane sum of key(j) for n keys, 16 at a time: each key leaves one vector of partial sums, and
// hsum16 reduces the 16 of them together.
template <class KeySums>
inline void reduce_keys16(int n, float* sc, const KeySums& key) {
  for (int j0 = 0; j0 < n; j0 += 16) {
    const int nk = std::min(16, n - j0);
    __m512 part[16];
#pragma GCC unroll 16
    for (int j = 0; j < 16; ++j) part[j] = j < nk ? key(j0 + j) : _mm512_setzero_ps();
    _mm512_mask_storeu_ps(sc + j0, nk == 16 ? __mmask16(0xffff) : tail(nk), hsum16(part));
  }
}

// Scores of 16 keys at a time for head sizes of NV vectors, q in registers.
template <int NV, class T>
inline void scores16(const float* q, const T* k, int64_t st, int n, float* sc) {
  __m512 qv[NV];
  for (int c = 0; c < NV; ++c) qv[c] = _mm512_loadu_ps(q + 16 * c);
  reduce_keys16(n, sc, [&](int j) {
    const T* kj = k + int64_t(j) * st;
    __m512 a = _mm512_mul_ps(qv[0], load16(kj, 0xffff));
#pragma GCC unroll 8
    for (int c = 1; c < NV; ++c) a = _mm512_fmadd_ps(qv[c], load16(kj + 16 * c, 0xffff), a);
    return a;
  });
}

// acc += sum_j p[j] v_j for head sizes of NV (4 or 8) vectors: key-major, the NV output vectors in
// registers (each value row is read once, contiguously). Named accumulators, not an array: GCC kept an
// array of 8 in registers but also stored every one to the stack after each key (8 dead 512-bit stores
// per value row).
template <int NV, class T>
inline void accum_rows(const float* p, const T* v, int64_t st, int n, float* acc) {
  static_assert(NV == 4 || NV == 8, "accum_rows: head sizes of 64 or 128");
  __m512 a0 = _mm512_loadu_ps(acc), a1 = _mm512_loadu_ps(acc + 16), a2 = _mm512_loadu_ps(acc + 32),
         a3 = _mm512_loadu_ps(acc + 48), a4, a5, a6, a7;
  if constexpr (NV == 8)
    a4 = _mm512_loadu_ps(acc + 64), a5 = _mm512_loadu_ps(acc + 80), a6 = _mm512_loadu_ps(acc + 96),
    a7 = _mm512_loadu_ps(acc + 112);
  for (int j = 0; j < n; ++j) {
    const __m512 pj = _mm512_set1_ps(p[j]);
    const T* vj = v + int64_t(j) * st;
    a0 = _mm512_fmadd_ps(pj, load16(vj, 0xffff), a0);
    a1 = _mm512_fmadd_ps(pj, load16(vj + 16, 0xffff), a1);
    a2 = _mm512_fmadd_ps(pj, load16(vj + 32, 0xffff), a2);
    a3 = _mm512_fmadd_ps(pj, load16(vj + 48, 0xffff), a3);
    if constexpr (NV == 8) {
      a4 = _mm512_fmadd_ps(pj, load16(vj + 64, 0xffff), a4);
      a5 = _mm512_fmadd_ps(pj, load16(vj + 80, 0xffff), a5);
      a6 = _mm512_fmadd_ps(pj, load16(vj + 96, 0xffff), a6);
      a7 = _mm512_fmadd_ps(pj, load16(vj + 112, 0xffff), a7);
    }
  }
  _mm512_storeu_ps(acc, a0), _mm512_storeu_ps(acc + 16, a1), _mm512_storeu_ps(acc + 32, a2),
      _mm512_storeu_ps(acc + 48, a3);
  if constexpr (NV == 8)
    _mm512_storeu_ps(acc + 64, a4), _mm512_storeu_ps(acc + 80, a5), _mm512_storeu_ps(acc + 96, a6),
        _mm512_storeu_ps(acc + 112, a7);
}

// 4-bit rows (attention.h): the 16 values of a group's low (or high) nibbles as float (c - 8), through a
// 16-entry table (vpermps reads only the low 4 bits of each index, so the low nibbles need no mask).
inline __m512 q4_table() { return _mm512_setr_ps(-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7); }
inline void q4_group(const uint8_t* p, __m512 table, __m512& lo, __m512& hi) {
  const __m512i w = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  lo = _mm512_permutexvar_ps(w, table);
  hi = _mm512_permutexvar_ps(_mm512_srli_epi32(w, 4), table);
}

// Scores of 4-bit keys, in registers (no dequantized copy): per key, each group's q . (c - 8) times the
// group's scale, 16 keys reduced together by hsum16. NG groups of 32 (head_dim 32 * NG).
template <int NG>
inline void scores16_q4(const float* q, const uint8_t* k, const float* ks, int64_t st, int64_t sst, int n, float* sc) {
  __m512 qv[2 * NG];
  for (int c = 0; c < 2 * NG; ++c) qv[c] = _mm512_loadu_ps(q + 16 * c);
  const __m512 table = q4_table();
  reduce_keys16(n, sc, [&](int j) {
    const uint8_t* kj = k + int64_t(j) * st;
    const float* sj = ks + int64_t(j) * sst;
    __m512 a = _mm512_setzero_ps();
#pragma GCC unroll 4
    for (int g = 0; g < NG; ++g) {
      __m512 lo, hi;
      q4_group(kj + 16 * g, table, lo, hi);
      const __m512 t = _mm512_fmadd_ps(qv[2 * g + 1], hi, _mm512_mul_ps(qv[2 * g], lo));
      a = _mm512_fmadd_ps(t, _mm512_set1_ps(sj[g]), a);
    }
    return a;
  });
}

// The same scores by integer dot products (attention_q4_query.h): per key, vpdpbusd of its low and its
// high nibbles (codes 0..15, as stored) with the query's int8 values in the matching order, started from
// -2 x the group's q8 sum in each of the group's 4 lanes (the -8 offset of the codes); lane l then holds
// a quarter of group l / 4's sum, converted and scaled by d_k x d_q of its group. 16 keys reduce together.
template <int NG>
inline void scores16_q4_vnni(const attn_detail::Row& row, const uint8_t* k, const float* ks, int64_t st, int64_t sst,
                             int n, float* sc) {
  constexpr int D = 32 * NG;
  constexpr __mmask64 kBytes = NG == 4 ? ~__mmask64(0) : __mmask64(0xffffffffu);
  constexpr __mmask16 kGroups = NG == 4 ? 0xf : 0x3, kLanes = NG == 4 ? 0xffff : 0xff;
  const __m512i qlo = _mm512_maskz_loadu_epi8(kBytes, row.q8), qhi = _mm512_maskz_loadu_epi8(kBytes, row.q8 + D / 2);
  const __m512i spread = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
  const __m512i start = _mm512_maskz_mullo_epi32(
      kLanes, _mm512_permutexvar_epi32(spread, _mm512_maskz_loadu_epi32(kGroups, row.qs)), _mm512_set1_epi32(-2));
  const __m512 dq = _mm512_permutexvar_ps(spread, _mm512_maskz_loadu_ps(kGroups, row.qd));
  const __m512i nib = _mm512_set1_epi8(0x0f);
  reduce_keys16(n, sc, [&](int j) {
    const __m512i kv = _mm512_maskz_loadu_epi8(kBytes, k + int64_t(j) * st);
    __m512i acc = _mm512_dpbusd_epi32(start, _mm512_and_si512(kv, nib), qlo);
    acc = _mm512_dpbusd_epi32(acc, _mm512_and_si512(_mm512_srli_epi16(kv, 4), nib), qhi);
    const __m512 s = _mm512_permutexvar_ps(spread, _mm512_maskz_loadu_ps(kGroups, ks + int64_t(j) * sst));
    return _mm512_mul_ps(_mm512_cvtepi32_ps(acc), _mm512_mul_ps(s, dq));
  });
}

// acc += sum_j p[j] v_j over 4-bit values, in registers: each group's (c - 8) times p[j] * its scale.
template <int NG>
inline void accum16_q4(const float* p, const uint8_t* v, const float* vs, int64_t st, int64_t sst, int n, float* acc) {
  __m512 a[2 * NG];
  for (int c = 0; c < 2 * NG; ++c) a[c] = _mm512_loadu_ps(acc + 16 * c);
  const __m512 table = q4_table();
  for (int j = 0; j < n; ++j) {
    const uint8_t* vj = v + int64_t(j) * st;
    const float* sj = vs + int64_t(j) * sst;
#pragma GCC unroll 4
    for (int g = 0; g < NG; ++g) {
      __m512 lo, hi;
      q4_group(vj + 16 * g, table, lo, hi);
      const __m512 w = _mm512_set1_ps(p[j] * sj[g]);
      a[2 * g] = _mm512_fmadd_ps(w, lo, a[2 * g]);
      a[2 * g + 1] = _mm512_fmadd_ps(w, hi, a[2 * g + 1]);
    }
  }
  for (int c = 0; c < 2 * NG; ++c) _mm512_storeu_ps(acc + 16 * c, a[c]);
}

struct Ops {
  // prefetch hints for the rows wanted next (attention_kernel.h, prefetch_rows)
  static constexpr bool kTouchAhead = false;
  // sc[j] = q . k_j for n keys, D values each, k_j at k + j * st.
  template <class T>
  static void scores(const float* q, const T* k, int64_t st, int n, int D, float* sc) {
    switch (D) {  // the usual head sizes (mpt-7b/30b: 128; the synthetic 125M: 64)
      case 64: return scores16<4>(q, k, st, n, sc);
      case 128: return scores16<8>(q, k, st, n, sc);
      default: break;
    }
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

  // 4-bit rows read in registers (attention_kernel.h: block_scores / block_values) for head sizes 64 and 128;
  // other head sizes take the dequantized rows.
  static constexpr bool kQ4Rows = true;
  static bool q4_rows_ok(int D) { return D == 64 || D == 128; }
  static void scores_q4(const attn_detail::Row& row, const uint8_t* k, const float* ks, int64_t st, int64_t sst, int n,
                        int D, float* sc) {
    if (row.q8) {  // decode: integer dot products on the codes
      if (D == 64) scores16_q4_vnni<2>(row, k, ks, st, sst, n, sc);
      else scores16_q4_vnni<4>(row, k, ks, st, sst, n, sc);
    } else if (D == 64) scores16_q4<2>(row.q, k, ks, st, sst, n, sc);
    else scores16_q4<4>(row.q, k, ks, st, sst, n, sc);
  }
  static void accum_q4(const float* p, const uint8_t* v, const float* vs, int64_t st, int64_t sst, int n, int D,
                       float* acc) {
    if (D == 64) accum16_q4<2>(p, v, vs, st, sst, n, acc);
    else accum16_q4<4>(p, v, vs, st, sst, n, acc);
  }

  // acc += sum_j p[j] v_j, 16 columns at a time held in registers across the keys.
  template <class T>
  static void accum(const float* p, const T* v, int64_t st, int n, int D, float* acc) {
    switch (D) {
      case 64: return accum_rows<4>(p, v, st, n, acc);
      case 128: return accum_rows<8>(p, v, st, n, acc);
      default: break;
    }
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
  // Prefill tiles (attend_range): R >= 4 query rows of kv head h against a block's n keys at once. The keys are
  // packed transposed (16 keys a vector, one vector per d; longer blocks 16 keys at a time), so 4 rows' scores
  // take D fmas each and no reduction; scale, ALiBi bias, causal mask and the online softmax work on vectors;
  // the values go through accum_rows as before. Same steps and exp as the row-by-row path; the dot products
  // sum in another order.
  static constexpr bool kTileRows = true;
  static bool tile_rows_ok(int D) { return D == 64 || D == 128; }
  // packed_keys: the block's keys as float rows (4-bit caches), else null (read from the cache).
  static void tile_rows(const KvCacheView& c, int64_t slot0, int n, int h, int p0, const attn_detail::Row* rows,
                        int R, float qk_scale, float* m, float* l, float* acc, const float* packed_keys,
                        const float* packed_values, attn_detail::Scratch& s) {
    if (c.head_dim == 64)
      tile_rows_nv<4>(c, slot0, n, h, p0, rows, R, qk_scale, m, l, acc, packed_keys, packed_values, s);
    else tile_rows_nv<8>(c, slot0, n, h, p0, rows, R, qk_scale, m, l, acc, packed_keys, packed_values, s);
  }
  template <int NV>
  static void tile_rows_nv(const KvCacheView& c, int64_t slot0, int n, int h, int p0, const attn_detail::Row* rows,
                           int R, float qk_scale, float* m, float* l, float* acc, const float* packed_keys,
                           const float* packed_values, attn_detail::Scratch& s) {
    constexpr int D = 16 * NV;
    const int KV = c.kv_heads, nch = (n + 15) / 16;
    const int64_t st = int64_t(KV) * D, base = (slot0 * KV + h) * D;
    const bool i8 = c.dtype == KvDtype::I8;
    const float NEG = -std::numeric_limits<float>::infinity();
    s.tiles.resize(size_t(nch) * 16 * D);
    const int pn = nch * 16;
    s.scores.resize(size_t(pn) * 6);
    float* ksv = s.scores.data();  // int8: the keys' and values' scales, 0 past n
    float* vsv = ksv + pn;
    float* sc = vsv + pn;  // 4 rows' scores, pn each, turned into probabilities in place
    for (int ch = 0; ch < nch; ++ch) {
      const int nk = std::min(16, n - 16 * ch);
      for (int dc = 0; dc < NV; ++dc) {
        __m512 r[16];
        for (int j = 0; j < 16; ++j)
          r[j] = j >= nk        ? _mm512_setzero_ps()
                 : packed_keys ? _mm512_loadu_ps(packed_keys + int64_t(16 * ch + j) * D + 16 * dc)
                               : load_row16(c.k, c.dtype, base + int64_t(16 * ch + j) * st + 16 * dc);
        transpose16(r);
        for (int e = 0; e < 16; ++e) _mm512_storeu_ps(s.tiles.data() + (size_t(ch) * D + 16 * dc + e) * 16, r[e]);
      }
      if (i8)
        for (int j = 0; j < 16; ++j) {
          const int64_t o = (slot0 + 16 * ch + j) * KV + h;
          ksv[16 * ch + j] = j < nk ? c.k_scale[o] : 0.0f;
          vsv[16 * ch + j] = j < nk ? c.v_scale[o] : 0.0f;
        }
    }
    const __m512 iota = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    for (int r0 = 0; r0 < R; r0 += 4) {
      const int r1 = std::min(r0 + 4, R);
      const float* q[4];
      for (int r = 0; r < 4; ++r) q[r] = rows[std::min(r0 + r, R - 1)].q;  // past R: the last row again, unused
      // the chunks the group's last row sees (rows go by position: it sees the most)
      const int seen = std::min(n, rows[r1 - 1].pos - p0 + 1);
      for (int ch = 0; ch * 16 < seen; ++ch) {
        __m512 o[4];
        scores4_t<NV>(q, s.tiles.data() + size_t(ch) * 16 * D, o);
        for (int r = 0; r < 4; ++r) _mm512_storeu_ps(sc + size_t(r) * pn + 16 * ch, o[r]);
      }
      for (int r = r0; r < r1; ++r) {
        const attn_detail::Row& row = rows[r];
        const int nv = std::min(n, row.pos - p0 + 1);
        if (nv <= 0) continue;
        float* p = sc + size_t(r - r0) * pn;
        const __m512 slope = _mm512_set1_ps(row.slope), vscale = _mm512_set1_ps(qk_scale);
        __m512 vmx = _mm512_set1_ps(NEG);
        for (int ch = 0; ch * 16 < nv; ++ch) {
          __m512 v = _mm512_loadu_ps(p + 16 * ch);
          if (i8) v = _mm512_mul_ps(v, _mm512_loadu_ps(ksv + 16 * ch));
          const __m512 rel = _mm512_add_ps(_mm512_set1_ps(float(p0 - row.pos + 16 * ch)), iota);
          v = _mm512_add_ps(_mm512_mul_ps(v, vscale), _mm512_mul_ps(slope, rel));
          v = _mm512_mask_mov_ps(_mm512_set1_ps(NEG), upto(nv, 16 * ch), v);
          _mm512_storeu_ps(p + 16 * ch, v);
          vmx = _mm512_max_ps(vmx, v);
        }
        const float mx = _mm512_reduce_max_ps(vmx);
        float* a = acc + size_t(r) * D;
        attn_detail::raise_max<Ops>(m[r], l[r], a, mx, D);
        const __m512 vm = _mm512_set1_ps(m[r]);
        __m512 sum = _mm512_setzero_ps();
        for (int ch = 0; ch * 16 < nv; ++ch) {
          const __mmask16 k = upto(nv, 16 * ch);
          __m512 e = _mm512_maskz_mov_ps(k, exp16(_mm512_sub_ps(_mm512_loadu_ps(p + 16 * ch), vm)));
          sum = _mm512_add_ps(sum, e);
          if (i8) e = _mm512_mul_ps(e, _mm512_loadu_ps(vsv + 16 * ch));
          _mm512_storeu_ps(p + 16 * ch, e);
        }
        l[r] += _mm512_reduce_add_ps(sum);
        accum_rows<NV>(p, packed_values, D, nv, a);
      }
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
  // One group of 32 values to 4-bit codes (attention_kernel.h, quantize_group_q4: the same floats).
  static float quantize_q4(const float* x, uint8_t* q) {
    const __m512 a = _mm512_loadu_ps(x), b = _mm512_loadu_ps(x + 16);
    const __m512 aa = _mm512_abs_ps(a), ab = _mm512_abs_ps(b);
    const float amax = _mm512_reduce_max_ps(_mm512_max_ps(aa, ab));
    if (amax == 0.0f || amax != amax) return attn_detail::quantize_group_q4(x, q);  // zeros (and NaN): scalar
    const uint32_t hit = uint32_t(_mm512_cmpeq_ps_mask(aa, _mm512_set1_ps(amax))) |
                         uint32_t(_mm512_cmpeq_ps_mask(ab, _mm512_set1_ps(amax))) << 16;
    const float d = x[__builtin_ctz(hit)] / -8.0f;  // the first value of largest magnitude
    const __m512 vd = _mm512_set1_ps(d), half = _mm512_set1_ps(8.5f), top = _mm512_set1_ps(15.0f);
    auto codes = [&](__m512 v) {
      const __m512 c = _mm512_min_ps(top, _mm512_roundscale_ps(_mm512_add_ps(_mm512_div_ps(v, vd), half),
                                                               _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC));
      return _mm512_cvtepi32_epi8(_mm512_cvttps_epi32(c));
    };
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q), _mm_or_si128(codes(a), _mm_slli_epi16(codes(b), 4)));
    return d;
  }
  // A 4-bit row (attention.h) of D values: (code - 8) * its group's scale.
  static void dequant_q4(const uint8_t* q, const float* sc, float* d, int D) {
    const __m512i low = _mm512_set1_epi32(15), eight = _mm512_set1_epi32(8);
    for (int g = 0; g < D / kQ4Group; ++g, q += kQ4Group / 2, d += kQ4Group) {
      const __m512i w = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q)));
      const __m512 s = _mm512_set1_ps(sc[g]);
      const __m512i lo = _mm512_sub_epi32(_mm512_and_si512(w, low), eight);
      const __m512i hi = _mm512_sub_epi32(_mm512_srli_epi32(w, 4), eight);
      _mm512_storeu_ps(d, _mm512_mul_ps(_mm512_cvtepi32_ps(lo), s));
      _mm512_storeu_ps(d + 16, _mm512_mul_ps(_mm512_cvtepi32_ps(hi), s));
    }
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
