// q8 activations x int4 / nf4 / int8 weights in the rows8 layout (quant_formats.h) with AVX-512 VNNI, any
// number of x rows. Two ways to feed vpdpbusd (unsigned codes x signed x codes, 4 products a lane):
//  - several x rows (pair_tile): two 8-row sets side by side in a layout tile (units u and u + 1 of a group)
//    make one 512-bit vector per 32-byte vector q of theirs, 16 rows x 4 k in the low nibbles (k 4q..4q+3)
//    and 16 rows x 4 other k in the high ones (16+4q..). Each x row's code dword for those k, broadcast to
//    every lane, gives with eight vpdpbusd each of the 16 rows' block dot in its own lane (no permutes, no
//    horizontal adds), and the decoded codes serve up to 8 x rows. int8 is the same with its 8 vectors of a
//    group as they are, + 128 (an xor). A whole layout tile takes both of its pairs a pass (tile_rows), so
//    that each broadcast feeds two vpdpbusd; only a tail tile of 1-3 sets goes pair by pair (row_passes<1>). Every
//    way, the codes a few groups ahead are prefetched into L1 alongside (StreamAhead).
//  - one x row of int4 / nf4 (one_row_tile): a 64-byte load is a set's vectors q and q + 1 with no shuffle;
//    the x block's code dwords are permuted to match once per block for the tile's 4 sets (lanes 0-7 dword
//    q, 8-15 dword q + 1), so the two halves of a row's block dot land in lanes r and r + 8 and add in int32.
// Either way the arithmetic from the block dot on is the AVX2 rows8 tile's (offset -8 / -64 x the x block's
// code sum, one convert and one fma per row and block, blocks in order): both variants give the same floats.
// int8's offset is -128 x the code sum, its fma takes x's d alone, and its row scale comes once at the end.
#include <immintrin.h>

#include <algorithm>
#include <vector>

#include "cpu/quant_formats.h"
#include "cpu/prefetch.h"
#include "cpu/quant_gemm.h"
#include "cpu/quant_rows8_driver.h"

namespace mpt {
namespace {

constexpr int kGroupBytes = 128;  // a set's int4 / nf4 codes for one group of 32 k: 8 rows x 32 k

// A worker reads its chunk's codes as one stream, tile after tile, group after group. Each group's step
// prefetches the codes some groups of a full tile further on, and past the chunk's end the start of the
// worker's next chunk (for_row_chunks claims it ahead), so that a chunk does not begin cold. Decode and
// small batches (under kBurstRows x rows) go kAheadGroups ahead into L1 (int4: 4 KB, int8: 8 KB); larger
// batches, which spend longer on each group, kAheadGroupsL2 ahead into L2, about as far as the next tile
// that this kernel prefetched before (group b of the next tile alongside group b of this one). On a Zen 5
// (2 threads, the 1.3B's 2048 x 8192 weights from memory; the builds before and after in turns, medians of
// 4 processes) one x row of int8 (the tied logits) read 15% faster than with that prefetch, one of int4 the
// same within the noise (in one process, the two schemes in rotated turns: 1-5% faster), 8 x rows the same.
constexpr int64_t kAheadGroups = 8, kAheadGroupsL2 = 32;
struct StreamAhead {
  const uint8_t* end = nullptr;   // the end of this chunk's codes
  const uint8_t* next = nullptr;  // the start of the next chunk's codes, or null
  int64_t dist = 0;               // bytes ahead
  bool l2 = false;                // towards L2 instead of L1
  // Prefetches `bytes` from `at` + dist (into the next chunk past this one's end).
  void operator()(const uint8_t* at, int64_t bytes) const {
    const uint8_t* a = at + dist;
    if (a >= end) {
      if (!next) return;
      a = next + (a - end);
    }
    if (l2)
      for (int64_t l = 0; l < bytes; l += 64) prefetch<2>(a + l);
    else
      for (int64_t l = 0; l < bytes; l += 64) prefetch<3>(a + l);
  }
};

static inline __m512i nf4_table() {  // kNf4Int8 + kNf4CodeOffset in each 128-bit lane (unsigned)
  return _mm512_add_epi8(_mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(kNf4Int8))),
                         _mm512_set1_epi8(kNf4CodeOffset));
}

template <QFormat FMT>
struct Rows8Vnni {
  static constexpr bool kReadsInt8 = true;
  static constexpr bool kNf4 = FMT == QFormat::Nf4, kInt8 = FMT == QFormat::Int8;
  static constexpr int kUnit = kInt8 ? 256 : kGroupBytes;  // bytes of a set's group
  const QWeight& w;
  const Q8Rows& x;
  const std::vector<int32_t>& init;  // [M, KB]: -8 (nf4: -64, int8: -128) x the block's x code sum
  const float* bias;
  float* y;

  // x rows m0 .. m0 + MB - 1 against the NP set pairs from set n8 (sets n8 + 2p and n8 + 2p + 1; the last pair
  // only its first set when `lone`), which lie in a layout tile of `ng` sets: from set n8's first unit, set
  // n8 + p's group b is unit b * ng + p. Vector v (0..7) of a pair holds k 4v..4v+3 of its 16 rows (int4 /
  // nf4: v < 4 the low nibbles of the sets' vector v, v >= 4 the high nibbles of vector v - 4; int8: vector v
  // + 128), against x dword v. ahead: the prefetch alongside, none when null.
  template <int NP, int MB>
  void pair_tile(int64_t n8, int64_t ng, int64_t m0, bool lone, const StreamAhead* ahead) const {
    const int64_t KB = x.KB, Kp = KB * 32, S = w.N / 8;
    const __m512i lo4 = _mm512_set1_epi8(15), table = nf4_table(), flip = _mm512_set1_epi8(static_cast<char>(0x80));
    const uint8_t* codes = w.data + rows8_unit(n8, 0, S, KB) * kUnit;
    // k per scale: nf4's blocksize (nf4_q8_ok: a power of two), int4's group (int4_group_ok)
    const int shift = __builtin_ctzll(kNf4 ? w.blocksize : w.group);
    const int64_t C = kNf4 ? w.K >> shift : int4_groups(w.K, w.group);  // scales a row
    const uint16_t* sc16 = FMT == QFormat::Int4 ? w.scale16 + rows8_unit(n8, 0, S, C) * 8 : nullptr;
    const float* am = kNf4 ? w.scale + rows8_unit(n8, 0, S, C) * 8 : nullptr;
    auto one_set = [&](int p) { return lone && p == NP - 1; };  // pair p is set n8 + 2p alone
    auto rows_of = [&](int p) -> __mmask16 { return one_set(p) ? 0x00ff : 0xffff; };
    __m512 acc[MB][NP];
    for (int m = 0; m < MB; ++m)
      for (int p = 0; p < NP; ++p) acc[m][p] = _mm512_setzero_ps();
    for (int64_t b = 0; b < KB; ++b) {
      if (ahead) (*ahead)(codes + b * ng * kUnit, ng * kUnit);
      __m512i wv[NP][8];
      __m512 sw[NP];
      for (int p = 0; p < NP; ++p) {
        const uint8_t* g = codes + (b * ng + 2 * p) * kUnit;
        const bool one = one_set(p);
        auto pair_vector = [&](int q) {  // vector q of both sets: set 2p's rows in lanes 0-7, 2p + 1's in 8-15
          const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(g + 32 * q));
          return one ? _mm512_zextsi256_si512(a)
                     : _mm512_inserti64x4(_mm512_castsi256_si512(a),
                                          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(g + kUnit + 32 * q)), 1);
        };
        if constexpr (kInt8) {
          for (int q = 0; q < 8; ++q) wv[p][q] = _mm512_xor_si512(pair_vector(q), flip);
        } else {
          for (int q = 0; q < 4; ++q) {
            const __m512i v = pair_vector(q);
            wv[p][q] = _mm512_and_si512(v, lo4), wv[p][q + 4] = _mm512_and_si512(_mm512_srli_epi16(v, 4), lo4);
            if (kNf4) wv[p][q] = _mm512_shuffle_epi8(table, wv[p][q]), wv[p][q + 4] = _mm512_shuffle_epi8(table, wv[p][q + 4]);
          }
        }
        // nf4: absmax here, its 1 / kNf4IntMax folded into x's d below; int8: its row scale comes at the end
        if constexpr (kNf4) sw[p] = _mm512_maskz_loadu_ps(rows_of(p), am + (((b * 32) >> shift) * ng + 2 * p) * 8);
        else if constexpr (!kInt8) sw[p] = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(rows_of(p), sc16 + (((b * 32) >> shift) * ng + 2 * p) * 8));
      }
      for (int m = 0; m < MB; ++m) {
        const int64_t i = (m0 + m) * KB + b;
        const int8_t* xb = x.q.data() + (m0 + m) * Kp + b * 32;
        auto xdword = [xb](int q) {  // x dword q broadcast straight from memory
          int32_t v;
          __builtin_memcpy(&v, xb + 4 * q, 4);
          return _mm512_set1_epi32(v);
        };
        const float d = kNf4 ? x.d[i] * kNf4IntScale : x.d[i];
        for (int p = 0; p < NP; ++p) {
          __m512i s = _mm512_set1_epi32(init[i]), t = _mm512_setzero_si512();  // two chains (vpdpbusd's latency)
          for (int q = 0; q < 4; ++q) {
            s = _mm512_dpbusd_epi32(s, wv[p][q], xdword(q));
            t = _mm512_dpbusd_epi32(t, wv[p][q + 4], xdword(q + 4));
          }
          const __m512 f = kInt8 ? _mm512_set1_ps(d) : _mm512_mul_ps(sw[p], _mm512_set1_ps(d));
          acc[m][p] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(s, t)), f, acc[m][p]);
        }
      }
    }
    for (int p = 0; p < NP; ++p) {
      const __mmask16 k = rows_of(p);
      const int64_t n = (n8 + 2 * p) * 8;
      const __m512 bv = bias ? _mm512_maskz_loadu_ps(k, bias + n) : _mm512_setzero_ps();
      // int8: y = acc * (scb / 127) + bias, as the row layout's kernels
      const __m512 rf = kInt8 ? _mm512_mul_ps(_mm512_maskz_loadu_ps(k, w.scale + n), _mm512_set1_ps(1.0f / 127.0f))
                              : _mm512_set1_ps(1.0f);
      for (int m = 0; m < MB; ++m)
        _mm512_mask_storeu_ps(y + (m0 + m) * w.N + n, k, kInt8 ? _mm512_add_ps(_mm512_mul_ps(acc[m][p], rf), bv)
                                                               : _mm512_add_ps(acc[m][p], bv));
    }
  }

  // x row m against the 4 sets of a whole layout tile from set n8.
  void one_row_tile(int64_t n8, int64_t m, const StreamAhead* ahead) const {
    constexpr int NG = 4;
    const int64_t KB = x.KB, Kp = KB * 32, S = w.N / 8;
    const __m512i lo4 = _mm512_set1_epi8(15), table = nf4_table();
    // x dwords (4 k each) for the low / high nibbles of a group's first and second 64 bytes
    const __m512i ia = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    const __m512i ib = _mm512_add_epi32(ia, _mm512_set1_epi32(4)), ic = _mm512_add_epi32(ia, _mm512_set1_epi32(2)),
                  id = _mm512_add_epi32(ia, _mm512_set1_epi32(6));
    const uint8_t* codes = w.data + rows8_unit(n8, 0, S, KB) * kGroupBytes;
    const int shift = __builtin_ctzll(kNf4 ? w.blocksize : w.group);
    const int64_t C = kNf4 ? w.K >> shift : int4_groups(w.K, w.group);
    const uint16_t* sc16 = kNf4 ? nullptr : w.scale16 + rows8_unit(n8, 0, S, C) * 8;
    const float* am = kNf4 ? w.scale + rows8_unit(n8, 0, S, C) * 8 : nullptr;
    __m256 acc[NG];
    for (int p = 0; p < NG; ++p) acc[p] = _mm256_setzero_ps();
    for (int64_t b = 0; b < KB; ++b) {
      if (ahead) (*ahead)(codes + b * NG * kGroupBytes, NG * kGroupBytes);
      const int64_t i = m * KB + b;
      const __m512i xv = _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.q.data() + m * Kp + b * 32)));
      const __m512i xa = _mm512_permutexvar_epi32(ia, xv), xh = _mm512_permutexvar_epi32(ib, xv),
                    xc = _mm512_permutexvar_epi32(ic, xv), xd = _mm512_permutexvar_epi32(id, xv);
      const __m512i start = _mm512_maskz_set1_epi32(0x00ff, init[i]);
      const __m256 dv = _mm256_set1_ps(kNf4 ? x.d[i] * kNf4IntScale : x.d[i]);
      for (int p = 0; p < NG; ++p) {
        const uint8_t* g = codes + (b * NG + p) * kGroupBytes;
        __m512i lo[2], hi[2];
        for (int h = 0; h < 2; ++h) {
          const __m512i v = _mm512_loadu_si512(g + 64 * h);
          lo[h] = _mm512_and_si512(v, lo4), hi[h] = _mm512_and_si512(_mm512_srli_epi16(v, 4), lo4);
          if (kNf4) lo[h] = _mm512_shuffle_epi8(table, lo[h]), hi[h] = _mm512_shuffle_epi8(table, hi[h]);
        }
        const __m256 sw = kNf4 ? _mm256_loadu_ps(am + (((b * 32) >> shift) * NG + p) * 8)
                               : _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sc16 + (((b * 32) >> shift) * NG + p) * 8)));
        __m512i s = _mm512_dpbusd_epi32(start, lo[0], xa);
        s = _mm512_dpbusd_epi32(s, hi[0], xh);
        s = _mm512_dpbusd_epi32(s, lo[1], xc);
        s = _mm512_dpbusd_epi32(s, hi[1], xd);
        const __m256i s32 = _mm256_add_epi32(_mm512_castsi512_si256(s), _mm512_extracti64x4_epi64(s, 1));
        acc[p] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s32), _mm256_mul_ps(sw, dv), acc[p]);
      }
    }
    for (int p = 0; p < NG; ++p) {
      const __m256 bv = bias ? _mm256_loadu_ps(bias + (n8 + p) * 8) : _mm256_setzero_ps();
      _mm256_storeu_ps(y + m * w.N + (n8 + p) * 8, _mm256_add_ps(acc[p], bv));
    }
  }

  // x rows m0 .. m1 - 1 against the NP set pairs from set n8 (the last pair only its first set when `lone`), 8,
  // then 4, then 1-3 x rows a pass; the prefetch rides on the first pass. A whole layout tile takes both of its
  // pairs a pass (NP = 2, tile_rows), a tail tile of 1-3 sets one pair at a time (NP = 1).
  template <int NP>
  void row_passes(int64_t n8, int64_t ng, bool lone, const StreamAhead* ahead, int64_t m0, int64_t m1) const {
    for (; m0 + 8 <= m1; m0 += 8, ahead = nullptr) pair_tile<NP, 8>(n8, ng, m0, lone, ahead);
    for (; m0 + 4 <= m1; m0 += 4, ahead = nullptr) pair_tile<NP, 4>(n8, ng, m0, lone, ahead);
    switch (m1 - m0) {
      case 1: pair_tile<NP, 1>(n8, ng, m0, lone, ahead); break;
      case 2: pair_tile<NP, 2>(n8, ng, m0, lone, ahead); break;
      case 3: pair_tile<NP, 3>(n8, ng, m0, lone, ahead); break;
      default: break;
    }
  }

  // x rows m0 .. m1 - 1 against a whole layout tile, both of its pairs a pass. Each x dword broadcast then feeds
  // two vpdpbusd (32 rows) instead of one: with one pair a pass the kernel ran at 0.7 vpdpbusd a cycle on a Zen 5
  // core, against 1.0-1.3 this way (2 a cycle is the peak; the convert-scale-fma per row and block shares those
  // pipes). Small batches and decode (1-4 rows) also read the tile's codes in memory order, one stream of codes
  // and one of scales, instead of each pair taking every other half of each group's 512 bytes in a pass of its
  // own (10.6-11.9 against 14.5 GB/s on one thread). One x row of int4 / nf4 takes one_row_tile.
  void tile_rows(int64_t t, const StreamAhead* ahead, int64_t m0, int64_t m1) const {
    if (!kInt8 && m1 - m0 == 1) return one_row_tile(t, m0, ahead);
    row_passes<2>(t, kRows8TileSets, false, ahead, m0, m1);
  }

  // x rows a pass over a worker's weight tiles: their codes (Kp bytes a row) fill at most a quarter of L2, so
  // that they stay there while each weight pair streams in once per pass. Without it a 512-row prompt streamed
  // all of x from L3 for every pair (1-4 MB on the 1.3B); the rows' results do not depend on the passes.
  int64_t x_rows_in_l2() const {
    const int64_t rows = gemm_cache_sizes().l2 / 4 / (x.KB * 32) / 8 * 8;
    return std::max<int64_t>(rows, 8);
  }

  // A chunk's first tile towards L2 in one burst, for 8 x rows or more: each tile prefetches the next one group
  // by group as it goes, but a worker's chunks are handed out as it asks (for_row_chunks), so the first tile of
  // a chunk was read on demand. Batch-sized x (8 rows, weights from memory) ran 6-19% faster on a Zen 5 for the
  // 1.3B's shapes whose chunks are 4-12 tiles, engine decode at batch 8 7.6% faster; one x row (decode, which
  // streams at the read bandwidth) was 5% slower with it, so it has none.
  static constexpr int64_t kBurstRows = 8;
  void prefetch_tile(int64_t t) const {
    const int64_t S = w.N / 8;
    const uint8_t* a = w.data + rows8_unit(t, 0, S, x.KB) * kUnit;
    const int64_t bytes = rows8_tile_sets(t, S) * x.KB * kUnit;
    for (int64_t l = 0; l < bytes; l += 64) prefetch<2>(a + l);
  }

  // sets t0 .. t1 - 1, whole layout tiles; t_next: the first set of this worker's next chunk (-1: none)
  auto make_worker() {
    return [this](int64_t t0, int64_t t1, int64_t t_next) {
      const int64_t S = w.N / 8;
      const int64_t mc = x_rows_in_l2();
      auto at = [&](int64_t t) { return w.data + t * x.KB * kUnit; };  // where set t's tile starts (t: a tile's first)
      if (x.M >= kBurstRows) prefetch_tile(t0);
      for (int64_t m_lo = 0; m_lo < x.M; m_lo += mc) {
        const int64_t m_hi = std::min(x.M, m_lo + mc);
        // the stream runs on into the next chunk in the last pass over this one, and on into its own start before
        const StreamAhead ahead{at(t1),
                                m_hi < x.M ? at(t0) : t_next >= 0 ? at(t_next) : nullptr,
                                (x.M < kBurstRows ? kAheadGroups : kAheadGroupsL2) * kRows8TileSets * kUnit,
                                x.M >= kBurstRows};
        for (int64_t t = t0; t < t1; t += kRows8TileSets) {
          const int64_t ng = rows8_tile_sets(t, S);
          if (ng == kRows8TileSets) {
            tile_rows(t, &ahead, m_lo, m_hi);
            continue;
          }
          const StreamAhead* a = &ahead;
          for (int64_t p = 0; p < ng; p += 2, a = nullptr) row_passes<1>(t + p, ng, p + 1 == ng, a, m_lo, m_hi);
        }
      }
    };
  }
};

}  // namespace

void qmatmul_q8_rows8_avx512(const QWeight& w, const Q8Rows& x, const float* bias, float* y) {
  run_rows8<Rows8Vnni>(w, x, bias, y);
}

}  // namespace mpt
