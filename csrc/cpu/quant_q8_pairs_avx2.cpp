// q8 activations x int4 / nf4 weights on AVX2, any number of x rows: a step is 8
// blocks of 32 k, read two blocks per 256-bit load in the weights' own layout, so that the float work
// (convert, scale, accumulate) runs once per 8 blocks instead of once per block.
//
// One load of 32 weight bytes holds blocks 2p and 2p+1 in its two 128-bit halves; its two nibble
// vectors are the blocks' first and second 16 codes (int4: low / high nibbles = k 0-15 / 16-31; nf4:
// high / low nibbles = even / odd k, looked up as int8 by a byte shuffle). x is rearranged once per
// call to match (PairX). The products of a pair land in int32 lanes 0-3 (block 2p) and 4-7 (2p+1);
// two horizontal adds per pair of pairs and one more per step leave one int32 sum per block, lane i
// holding block kPerm[i] of the step. int4 codes stay unsigned (0..15, pmaddubsw's unsigned operand)
// and the -8 offset comes in as -8 * (sum of the x block's codes), an exact integer. nf4 codes are looked
// up as kNf4Int8 + 64 (1..127, unsigned; pair sums <= 2*127*127 fit int16, but not two of them, so each
// half widens to int32 on its own) and the +64 comes back as -64 * the x block's code sum.
// Blocks past the last full step (K not a multiple of 256) take a per-block tail, summed after.
#include <immintrin.h>

#include <algorithm>
#include <vector>

#include "cpu/quant_formats.h"
#include "cpu/quant_gemm.h"
#include "cpu/thread_pool.h"
#include "cpu/vec_math_avx2.h"

namespace mpt {
namespace {

constexpr int kPerm[8] = {0, 2, 4, 6, 1, 3, 5, 7};  // block of the step in each lane after the adds
// Weight bytes ahead of a step that it prefetches (the rows a thread reads are contiguous). On a Zen 3
// guest, one thread reading from memory: 10-11 -> 12-14 GB/s at 1-2 KiB (the hardware prefetchers alone
// keep too few lines in flight while the thread computes).
constexpr int kPrefetchBytes = 2048;
constexpr int kRowsPerPass = 4;  // x rows sharing one decode of a weight step (a batch-8 step 1.08x faster than with 2)
// What the unsigned codes the kernel multiplies add to the format's own: int4 stores q = code + 8; nf4 is
// looked up as kNf4Int8 + kNf4CodeOffset.
template <QFormat FMT>
constexpr int kCodeOffset = FMT == QFormat::Int4 ? 8 : kNf4CodeOffset;

// x of Q8Rows in pair order: per step (8 blocks) of row m, 4 pairs x 64 bytes (first halves of both
// blocks, then second halves), and per lane i of the step, d of block kPerm[i] and -offset * its code sum.
struct PairX {
  int64_t M = 0, S = 0;  // S: full steps (8 blocks each)
  std::vector<int8_t> q;
  std::vector<float> d;
  std::vector<int32_t> init;
};

template <QFormat FMT>
void pack_pairs(const Q8Rows& x, PairX& p) {
  const int64_t Kp = x.KB * 32;
  p.M = x.M, p.S = x.KB / 8;
  p.q.resize(static_cast<size_t>(p.M * p.S * 256));
  p.d.resize(static_cast<size_t>(p.M * p.S * 8));
  p.init.resize(static_cast<size_t>(p.M * p.S * 8));
  std::vector<int32_t> sums;
  q8_block_sums(x, -kCodeOffset<FMT>, sums);
  for (int64_t m = 0; m < p.M; ++m)
    for (int64_t s = 0; s < p.S; ++s) {
      const int8_t* src = x.q.data() + m * Kp + s * 256;
      int8_t* dst = p.q.data() + (m * p.S + s) * 256;
      for (int pr = 0; pr < 4; ++pr)
        for (int h = 0; h < 2; ++h)      // block 2pr + h
          for (int j = 0; j < 16; ++j) {  // its j-th code of each half
            const int8_t* blk = src + (2 * pr + h) * 32;
            const int first = FMT == QFormat::Int4 ? j : 2 * j, second = FMT == QFormat::Int4 ? 16 + j : 2 * j + 1;
            dst[pr * 64 + h * 16 + j] = blk[first];
            dst[pr * 64 + 32 + h * 16 + j] = blk[second];
          }
      for (int i = 0; i < 8; ++i) {
        const int64_t b = s * 8 + kPerm[i];
        p.d[static_cast<size_t>((m * p.S + s) * 8 + i)] = x.d[static_cast<size_t>(m * x.KB + b)];
        p.init[static_cast<size_t>((m * p.S + s) * 8 + i)] = sums[static_cast<size_t>(m * x.KB + b)];
      }
    }
}

// Weight scales of step s of row n in lane order (int4: group scales; nf4: absmax / kNf4IntMax per block).
template <QFormat FMT>
inline __m256 step_scales(const QWeight& w, int64_t n, int64_t s, int shift) {
  const __m256i perm = _mm256_setr_epi32(kPerm[0], kPerm[1], kPerm[2], kPerm[3], kPerm[4], kPerm[5], kPerm[6], kPerm[7]);
  if (FMT == QFormat::Int4) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w.scale16 + n * int4_groups(w.K) + s * 8));
    return _mm256_permutevar8x32_ps(_mm256_cvtph_ps(h), perm);
  }
  const float* a = w.scale + ((n * w.K + s * 256) >> shift);
  __m256 v;
  if (shift == 6) {  // bitsandbytes' default blocksize 64: block b uses a[b / 2], lane i holds block kPerm[i]
    v = _mm256_broadcast_ps(reinterpret_cast<const __m128*>(a));
  } else if (shift == 5) {
    v = _mm256_permutevar8x32_ps(_mm256_loadu_ps(a), perm);
  } else {
    alignas(32) float t[8];
    for (int i = 0; i < 8; ++i) t[i] = w.scale[(n * w.K + (s * 8 + kPerm[i]) * 32) >> shift];
    v = _mm256_load_ps(t);
  }
  return _mm256_mul_ps(v, _mm256_set1_ps(kNf4IntScale));
}

// Block b of row n against x row xq (32 codes): the integer dot product, for the tail blocks.
template <QFormat FMT>
inline int32_t block_dot(const QWeight& w, int64_t n, int64_t b, const int8_t* xq) {
  int32_t s = 0;
  for (int j = 0; j < 32; ++j) {
    int c;
    if (FMT == QFormat::Int4) {
      const uint8_t byte = w.data[(n * int4_groups(w.K) + b) * 16 + (j & 15)];
      c = (j < 16 ? byte & 15 : byte >> 4) - 8;
    } else {
      const int64_t f = n * w.K + b * 32 + j;
      c = kNf4Int8[(f & 1) ? (w.data[f >> 1] & 15) : (w.data[f >> 1] >> 4)];
    }
    s += c * xq[j];
  }
  return s;
}

template <QFormat FMT, int MB>
void pair_rows(const QWeight& w, const Q8Rows& x, const PairX& px, int64_t m0, const float* bias, float* y, int64_t n0,
               int64_t n1) {
  const int64_t S = px.S, K = w.K, KB = x.KB, N = w.N;
  const int shift = FMT == QFormat::Nf4 ? __builtin_ctzll(w.blocksize) : 0;  // nf4_q8_ok: a power of two
  const __m256i lo4 = _mm256_set1_epi8(15), ones = _mm256_set1_epi16(1);
  const __m256i table = _mm256_add_epi8(_mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(kNf4Int8))),
                                        _mm256_set1_epi8(kCodeOffset<QFormat::Nf4>));
  const int64_t row_bytes = FMT == QFormat::Int4 ? KB * 16 : K / 2;
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* wrow = w.data + n * row_bytes;
    __m256 acc[MB];
    for (int m = 0; m < MB; ++m) acc[m] = _mm256_setzero_ps();
    for (int64_t s = 0; s < S; ++s) {
      const uint8_t* ws = wrow + s * 128;
      _mm_prefetch(reinterpret_cast<const char*>(ws + kPrefetchBytes), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(ws + kPrefetchBytes + 64), _MM_HINT_T0);
      __m256i half[2][MB];  // the hadd of pairs (0, 1) and of pairs (2, 3)
      for (int hp = 0; hp < 2; ++hp) {
        __m256i pr[2][MB];
        for (int j = 0; j < 2; ++j) {
          const int p = 2 * hp + j;
          const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ws + p * 32));
          const __m256i hi_n = _mm256_and_si256(_mm256_srli_epi16(raw, 4), lo4), lo_n = _mm256_and_si256(raw, lo4);
          // The unsigned codes of each block's first and second halves (nf4: even k in the high nibbles).
          const __m256i first = FMT == QFormat::Int4 ? lo_n : _mm256_shuffle_epi8(table, hi_n);
          const __m256i second = FMT == QFormat::Int4 ? hi_n : _mm256_shuffle_epi8(table, lo_n);
          for (int m = 0; m < MB; ++m) {
            const int8_t* xp = px.q.data() + ((m0 + m) * S + s) * 256 + p * 64;
            const __m256i xa = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xp));
            const __m256i xb = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xp + 32));
            if (FMT == QFormat::Int4) {  // nibbles 0..15 x codes: pair sums <= 2*15*127, two of them fit int16
              pr[j][m] = _mm256_madd_epi16(_mm256_add_epi16(_mm256_maddubs_epi16(first, xa), _mm256_maddubs_epi16(second, xb)),
                                           ones);
            } else {  // looked-up codes 1..127 x codes: pair sums <= 2*127*127, widened one half at a time
              pr[j][m] = _mm256_add_epi32(_mm256_madd_epi16(_mm256_maddubs_epi16(first, xa), ones),
                                          _mm256_madd_epi16(_mm256_maddubs_epi16(second, xb), ones));
            }
          }
        }
        for (int m = 0; m < MB; ++m) half[hp][m] = _mm256_hadd_epi32(pr[0][m], pr[1][m]);
      }
      const __m256 ws8 = step_scales<FMT>(w, n, s, shift);
      for (int m = 0; m < MB; ++m) {
        const size_t o = static_cast<size_t>(((m0 + m) * S + s) * 8);
        const __m256i blocks = _mm256_add_epi32(_mm256_hadd_epi32(half[0][m], half[1][m]),
                                                _mm256_loadu_si256(reinterpret_cast<const __m256i*>(px.init.data() + o)));
        acc[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(blocks), _mm256_mul_ps(ws8, _mm256_loadu_ps(px.d.data() + o)), acc[m]);
      }
    }
    const float bi = bias ? bias[n] : 0.f;
    for (int m = 0; m < MB; ++m) {
      float r = avx2_math::hsum8(acc[m]);
      const int8_t* xq = x.q.data() + (m0 + m) * KB * 32;
      for (int64_t b = S * 8; b < KB; ++b) {
        const float dw = FMT == QFormat::Int4 ? int4_scale(w, n, b)
                                              : w.scale[(n * K + b * 32) >> shift] * kNf4IntScale;
        r += static_cast<float>(block_dot<FMT>(w, n, b, xq + b * 32)) * (dw * x.d[static_cast<size_t>((m0 + m) * KB + b)]);
      }
      y[(m0 + m) * N + n] = r + bi;
    }
  }
}

template <QFormat FMT>
void pair_run(const QWeight& w, const Q8Rows& x, const float* bias, float* y) {
  struct Rows {
    const QWeight& w;
    const Q8Rows& x;
    const PairX& px;
    const float* bias;
    float* y;
    auto make_worker() {
      return [this](int64_t n0, int64_t n1) {
        for (int64_t m0 = 0; m0 < x.M; m0 += kRowsPerPass) {
          switch (std::min<int64_t>(kRowsPerPass, x.M - m0)) {
            case 1: pair_rows<FMT, 1>(w, x, px, m0, bias, y, n0, n1); break;
            case 2: pair_rows<FMT, 2>(w, x, px, m0, bias, y, n0, n1); break;
            case 3: pair_rows<FMT, 3>(w, x, px, m0, bias, y, n0, n1); break;
            default: pair_rows<FMT, 4>(w, x, px, m0, bias, y, n0, n1); break;
          }
        }
      };
    }
  };
  PairX px;
  pack_pairs<FMT>(x, px);
  for_row_chunks(w.N, decode_chunk(w.N), Rows{w, x, px, bias, y});
}

}  // namespace

void qmatmul_q8_pairs_avx2(const QWeight& w, const Q8Rows& x, const float* bias, float* y) {
  if (w.fmt == QFormat::Nf4) return pair_run<QFormat::Nf4>(w, x, bias, y);
  pair_run<QFormat::Int4>(w, x, bias, y);
}

}  // namespace mpt
