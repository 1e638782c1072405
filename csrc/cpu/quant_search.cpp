// Searched block scales for int4 and nf4 (quant_search.h). Float32 throughout, sums pairwise in a
// fixed order (tree_sum), so the reference in mpt_lite/kernels/reference.py agrees bit for bit.
#include "cpu/quant_search.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "cpu/load_vectors.h"
#include "cpu/quant_formats.h"
#include "cpu/thread_pool.h"

namespace mpt {

namespace {

// The search runs at load time over every weight: an AVX2 clone of the two workers (load_vectors.h) keeps
// loading near the absmax quantizers' speed, every clone giving the same bits.

constexpr float kInt4Trials[] = {7.0f, 7.5f, 8.0f, 8.5f, 9.0f, 9.5f, 10.0f};
constexpr float kNf4Trials[] = {1.0f, 1.1f, 1.2f};

struct Fit {
  float scale = 0.f, gain = 0.f;  // least-squares scale, error it removes
};

MPT_INLINE Fit ls_fit(float sumlx, float suml2) {
  Fit f;
  if (suml2 > 0.f) {
    f.scale = sumlx / suml2;
    f.gain = f.scale * sumlx;
  }
  return f;
}

MPT_INLINE float inverse(float s) { return s != 0.f ? 1.0f / s : 0.f; }

// Pairwise sum of a[0..n) (n a power of two): a[j] += a[j + n/2], halving n; overwrites a. The
// reference sums in the same order, so both agree bit for bit.
MPT_INLINE float tree_sum(float* a, int64_t n) {
  for (int64_t width = n / 2; width > 0; width /= 2)
    for (int64_t j = 0; j < width; ++j) a[j] += a[j + width];
  return a[0];
}

// nf4 holds a block of 8 V floats as a Group of vectors.
template <int V>
struct Group {
  v8f v[V];
};

// the tree_sum order over 8 V: a[j] += a[j + 4 V], ..., + 8 (whole vectors), then + 4, + 2, + 1 in the last one
template <int V>
MPT_INLINE float tree_sum_vectors(v8f* a) {
  for (int width = V / 2; width > 0; width /= 2)
    for (int i = 0; i < width; ++i) a[i] += a[i + width];
  const v8f s = a[0];
  const float t0 = s[0] + s[4], t1 = s[1] + s[5], t2 = s[2] + s[6], t3 = s[3] + s[7];
  return (t0 + t2) + (t1 + t3);
}

template <int V>
MPT_INLINE Fit group_fit(const Group<V>& x, const Group<V>& l) {
  v8f sx[V], s2[V];
  for (int i = 0; i < V; ++i) {
    sx[i] = x.v[i] * l.v[i];
    s2[i] = l.v[i] * l.v[i];
  }
  return ls_fit(tree_sum_vectors<V>(sx), tree_sum_vectors<V>(s2));
}

// nf4 code q = number of code midpoints strictly below x * inv (as quantize_nf4 counts them).
MPT_INLINE void nf4_assign(const float* x, int64_t n, float inv, const float* mids, uint8_t* q) {
  for (int64_t j = 0; j < n; ++j) {
    const float v = x[j] * inv;
    int c = 0;
    for (int i = 0; i < 15; ++i) c += v > mids[i];
    q[j] = static_cast<uint8_t>(c);
  }
}

// x is the block zero-padded to n (a power of two); sx, s2 are scratch of n floats.
MPT_INLINE Fit nf4_fit(const float* x, int64_t n, const uint8_t* q, float* sx, float* s2) {
  for (int64_t j = 0; j < n; ++j) {
    const float c = kNf4Code[q[j]];
    sx[j] = x[j] * c;
    s2[j] = c * c;
  }
  return ls_fit(tree_sum(sx, n), tree_sum(s2, n));
}

// int4 searches eight groups at once, one a vector lane: every step is the scalar recipe's own IEEE
// operation on each lane (sums in tree_sum's order down the group's k), so no horizontal work and no
// branch remains, and every lane's floats equal the reference's.
struct Lanes {
  v8f scale, gain;
};

MPT_INLINE v8f select(v8i mask, v8f a, v8f b) { return mask ? a : b; }

MPT_INLINE v8f lane_inverse(v8f s) { return select(s != 0.f, 1.0f / s, v8f{}); }

// the int4 level of x * inv: round(clamp(x * inv, -8, 7)), rounding half to even as torch.round
MPT_INLINE v8f lane_level(v8f x, v8f inv) {
  const v8f lo = v8f{} - 8.f, hi = v8f{} + 7.f;
  v8f t = x * inv;
  t = t < lo ? lo : t;
  t = t > hi ? hi : t;
  return round_even8(t);
}

template <int L>
MPT_INLINE void lanes_assign(const v8f* x, v8f inv, v8f* l) {
  for (int k = 0; k < L; ++k) l[k] = lane_level(x[k], inv);
}

// ls_fit of each lane for the levels of x * inv, its sums pairwise over k in tree_sum's order (k += k + L/2,
// ..., + 1). The first two levels are summed as the levels are made, four k a pass, so that only L/4
// partial sums are kept.
template <int L>
MPT_INLINE Lanes lanes_fit(const v8f* x, v8f inv) {
  constexpr int Q = L / 4;
  v8f sx[Q], s2[Q];
  for (int k = 0; k < Q; ++k) {
    const v8f l0 = lane_level(x[k], inv), l1 = lane_level(x[k + Q], inv), l2 = lane_level(x[k + 2 * Q], inv),
              l3 = lane_level(x[k + 3 * Q], inv);
    sx[k] = (x[k] * l0 + x[k + 2 * Q] * l2) + (x[k + Q] * l1 + x[k + 3 * Q] * l3);
    s2[k] = (l0 * l0 + l2 * l2) + (l1 * l1 + l3 * l3);
  }
  for (int width = Q / 2; width > 0; width /= 2)
    for (int k = 0; k < width; ++k) {
      sx[k] += sx[k + width];
      s2[k] += s2[k + width];
    }
  const v8i ok = s2[0] > 0.f;
  const v8f scale = select(ok, sx[0] / s2[0], v8f{});
  return {scale, select(ok, scale * sx[0], v8f{})};
}

// groups i0 .. i0 + count - 1 (count <= 8) of the (row, group) order, group c of row n being n * C + c
template <int V>
MPT_INLINE void int4_lanes(const float* w, int64_t K, int64_t i0, int count, uint8_t* packed, uint16_t* scales) {
  constexpr int L = 8 * V;  // k per scale
  const int64_t G = int4_groups(K), C = int4_groups(K, L);
  float buf[8][L];
  for (int j = 0; j < 8; ++j) {
    int64_t len = 0;
    if (j < count) {
      const int64_t n = (i0 + j) / C, k0 = (i0 + j) % C * L;
      len = std::min<int64_t>(L, K - k0);
      std::memcpy(buf[j], w + n * K + k0, len * sizeof(float));
    }
    std::fill(buf[j] + len, buf[j] + L, 0.f);
  }
  v8f x[L], l[L];
  for (int k = 0; k < L; ++k)
    for (int j = 0; j < 8; ++j) x[k][j] = buf[j][k];
  // the largest |x|, and the first x of that magnitude (as torch.argmax)
  v8f amax = v8f{}, m = v8f{};
  for (int k = 0; k < L; ++k) {
    const v8f a = x[k] < 0.f ? -x[k] : x[k];
    amax = a > amax ? a : amax;
  }
  v8i found = v8i{};
  for (int k = 0; k < L; ++k) {
    const v8f a = x[k] < 0.f ? -x[k] : x[k];
    const v8i first = (a == amax) & ~found;
    m = select(first, x[k], m);
    found |= first;
  }
  v8f best_scale = v8f{}, best_gain = v8f{} - 1.f;
  for (float t : kInt4Trials) {
    const Lanes f = lanes_fit<L>(x, select(m != 0.f, -t / m, v8f{}));
    const v8i better = f.gain > best_gain;  // the first trial wins ties
    best_gain = select(better, f.gain, best_gain);
    best_scale = select(better, f.scale, best_scale);
  }
  // Refit once on the best trial's levels, round that scale to half (what is stored), and assign the
  // codes for the rounded scale, so the stored pair is self-consistent.
  const v8f s1 = lanes_fit<L>(x, lane_inverse(best_scale)).scale;
  uint16_t h[8];
  v8f hs;
  for (int j = 0; j < 8; ++j) h[j] = half_bits(s1[j]), hs[j] = half_to_float(h[j]);
  lanes_assign<L>(x, lane_inverse(hs), l);
  for (int j = 0; j < count; ++j) {
    const int64_t n = (i0 + j) / C, c = (i0 + j) % C;
    scales[n * C + c] = h[j];
    for (int64_t u = 0; u < L / kInt4Group && c * (L / kInt4Group) + u < G; ++u) {
      uint8_t* out = packed + (n * G + c * (L / kInt4Group) + u) * 16;
      for (int q = 0; q < 16; ++q) {
        const int k = u * kInt4Group + q;
        out[q] = static_cast<uint8_t>(static_cast<int>(l[k][j]) + 8 | (static_cast<int>(l[k + 16][j]) + 8) << 4);
      }
    }
  }
}

template <int V>
MPT_INLINE void int4_rows_of(const float* w, int64_t n0, int64_t n1, int64_t K, uint8_t* packed, uint16_t* scales) {
  const int64_t C = int4_groups(K, 8 * V), i1 = n1 * C;
  for (int64_t i = n0 * C; i < i1; i += 8)
    int4_lanes<V>(w, K, i, static_cast<int>(std::min<int64_t>(8, i1 - i)), packed, scales);
}

MPT_LOAD_CLONES void int4_rows(const float* w, int64_t n0, int64_t n1, int64_t K, int64_t group, uint8_t* packed,
                                 uint16_t* scales) {
  static_assert(kInt4Group == 32 && kInt4MaxGroup == 256, "int4 groups are 4 to 32 vectors of 8");
  switch (group) {
    case 32: return int4_rows_of<4>(w, n0, n1, K, packed, scales);
    case 64: return int4_rows_of<8>(w, n0, n1, K, packed, scales);
    case 128: return int4_rows_of<16>(w, n0, n1, K, packed, scales);
    default: return int4_rows_of<32>(w, n0, n1, K, packed, scales);
  }
}

// nf4 over a block of 8 V floats (padded with zeros) as vectors: the code of a value is the number of
// midpoints below it, found by a binary search over the 15 sorted midpoints (four compares, not fifteen; the
// same count, NaN included: every compare false gives 0), its code value looked up (exact), and the sums in
// tree_sum's order (tree_sum_vectors): the same floats as the scalar path below.
struct Nf4Tables {
  v8f mid_lo, mid_hi, code_lo, code_hi;  // midpoints 0-7, 8-14 (and an unused 15th), code values 0-7, 8-15
};

// table[idx] for a 16-entry table held as two vectors (idx 0..15 per lane)
MPT_INLINE v8f lookup16(v8f lo, v8f hi, v8i idx) {
#if defined(__GNUC__) && !defined(__clang__)
  return __builtin_shuffle(lo, hi, idx);
#else
  v8f r;
  for (int j = 0; j < 8; ++j) r[j] = idx[j] < 8 ? lo[idx[j]] : hi[idx[j] - 8];
  return r;
#endif
}

template <int V>
MPT_INLINE void nf4_assign_vec(const Group<V>& x, float inv, const Nf4Tables& t, Group<V>& c, v8i* q) {
  const v8f m3 = v8f{} + t.mid_lo[3], m7 = v8f{} + t.mid_lo[7], m11 = v8f{} + t.mid_hi[3];
  for (int i = 0; i < V; ++i) {
    const v8f v = x.v[i] * inv;
    v8i above = v > m7;  // -1 where true
    v8i n = above & 8;
    above = v > (above ? m11 : m3);
    n += above & 4;
    n += (v > lookup16(t.mid_lo, t.mid_hi, n + 1)) & 2;
    n += (v > lookup16(t.mid_lo, t.mid_hi, n)) & 1;
    q[i] = n;
    c.v[i] = lookup16(t.code_lo, t.code_hi, n);
  }
}

// max |x| of a block (finite values, zero padding): the same float in any order, as the scalar fmax loop
template <int V>
MPT_INLINE float block_absmax(const Group<V>& x) {
  v8f m = v8f{};
  for (int i = 0; i < V; ++i) {
    const v8f a = (v8f)((v8i)x.v[i] & 0x7fffffff);
    m = a > m ? a : m;
  }
  float r = 0.f;
  for (int j = 0; j < 8; ++j) r = m[j] > r ? m[j] : r;
  return r;
}

template <int V>
MPT_INLINE void nf4_blocks_vec(const float* w, int64_t b0, int64_t b1, int64_t numel, int64_t blocksize,
                               const float* mids, uint8_t* packed, float* absmax) {
  constexpr int64_t n = 8 * V;
  Nf4Tables t{};
  for (int j = 0; j < 8; ++j) {
    t.mid_lo[j] = mids[j], t.code_lo[j] = kNf4Code[j], t.code_hi[j] = kNf4Code[8 + j];
    t.mid_hi[j] = j < 7 ? mids[8 + j] : mids[14];
  }
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t f0 = b * blocksize, len = std::min(numel, f0 + blocksize) - f0;
    float buf[n];
    std::fill(buf, buf + n, 0.f);
    std::copy(w + f0, w + f0 + len, buf);
    Group<V> x;
    std::memcpy(x.v, buf, sizeof(buf));
    const float inv = inverse(block_absmax<V>(x));
    Group<V> c, best_c;
    v8i q[V], best_q[V];
    float best_gain = -1.f;
    for (float trial : kNf4Trials) {
      nf4_assign_vec<V>(x, trial * inv, t, c, q);
      const Fit f = group_fit<V>(x, c);
      if (f.gain > best_gain) {  // the first trial wins ties
        best_gain = f.gain;
        best_c = c;
        std::memcpy(best_q, q, sizeof(q));
      }
    }
    nf4_assign_vec<V>(x, inverse(group_fit<V>(x, best_c).scale), t, c, q);
    absmax[b] = group_fit<V>(x, c).scale;
    int32_t codes[n];
    std::memcpy(codes, q, sizeof(codes));
    for (int64_t j = 0; j < len; j += 2) {
      const uint8_t lo = j + 1 < len ? static_cast<uint8_t>(codes[j + 1]) : 0;  // an odd weight's pad nibble is 0
      packed[(f0 + j) >> 1] = static_cast<uint8_t>(codes[j] << 4 | lo);
    }
  }
}

MPT_LOAD_CLONES void nf4_blocks(const float* w, int64_t b0, int64_t b1, int64_t numel, int64_t blocksize,
                                  const float* mids, uint8_t* packed, float* absmax) {
  int64_t n = 1;
  while (n < blocksize) n *= 2;
  switch (n) {
    case 64: return nf4_blocks_vec<8>(w, b0, b1, numel, blocksize, mids, packed, absmax);
    case 128: return nf4_blocks_vec<16>(w, b0, b1, numel, blocksize, mids, packed, absmax);
    case 256: return nf4_blocks_vec<32>(w, b0, b1, numel, blocksize, mids, packed, absmax);
    default: break;
  }
  std::vector<float> x(n), sx(n), s2(n);
  std::vector<uint8_t> q(n), best(n);
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t f0 = b * blocksize, len = std::min(numel, f0 + blocksize) - f0;
    std::fill(x.begin(), x.end(), 0.f);
    std::copy(w + f0, w + f0 + len, x.begin());
    float amax = 0.f;
    for (int64_t j = 0; j < len; ++j) amax = std::fmax(amax, std::fabs(x[j]));
    const float inv = inverse(amax);
    float best_gain = -1.f;
    for (float t : kNf4Trials) {
      nf4_assign(x.data(), n, t * inv, mids, q.data());
      const Fit f = nf4_fit(x.data(), n, q.data(), sx.data(), s2.data());
      if (f.gain > best_gain) {  // the first trial wins ties
        best_gain = f.gain;
        std::swap(q, best);
      }
    }
    const float s = nf4_fit(x.data(), n, best.data(), sx.data(), s2.data()).scale;
    nf4_assign(x.data(), n, inverse(s), mids, q.data());
    absmax[b] = nf4_fit(x.data(), n, q.data(), sx.data(), s2.data()).scale;
    for (int64_t j = 0; j < len; j += 2) {
      const uint8_t lo = j + 1 < len ? q[j + 1] : 0;  // the pad nibble of an odd-sized weight is 0
      packed[(f0 + j) >> 1] = static_cast<uint8_t>(q[j] << 4 | lo);
    }
  }
}

}  // namespace

void search_quantize_int4(const float* w, int64_t N, int64_t K, uint8_t* packed, uint16_t* scales, int64_t group) {
  if (!int4_group_ok(group)) throw std::invalid_argument("int4 group must be a power of two from 32 to 256");
  parallel_for(N, 1, [&](int64_t n0, int64_t n1) { int4_rows(w, n0, n1, K, group, packed, scales); });
}

void search_quantize_nf4(const float* w, int64_t numel, int64_t blocksize, uint8_t* packed, float* absmax) {
  const int64_t nblocks = (numel + blocksize - 1) / blocksize;
  float mids[15];
  for (int i = 0; i < 15; ++i) mids[i] = 0.5f * (kNf4Code[i] + kNf4Code[i + 1]);
  // Blocks are even-sized (checked by the Python side), so no byte is shared by two blocks.
  parallel_for(nblocks, 1, [&](int64_t b0, int64_t b1) { nf4_blocks(w, b0, b1, numel, blocksize, mids, packed, absmax); });
}

}  // namespace mpt
