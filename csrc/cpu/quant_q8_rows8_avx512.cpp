// q8 activations x int4 / nf4 weights in the rows8 layout (quant_formats.h) with AVX-512 VNNI, any number of
// x rows. A 64-byte load of a group is its vectors q and q + 1: 8 rows x 4 k in each 256-bit half (low
// nibbles), 8 rows x 4 other k (high nibbles). The x block's code dwords are permuted to match (dword q in
// lanes 0-7, q + 1 in lanes 8-15), so four vpdpbusd (unsigned codes x signed x codes) leave in lanes r and
// r + 8 the two halves of row r's block dot; the halves add in int32 and from there the arithmetic is the
// AVX2 rows8 tile's (offset -8 / -64 x the x block's code sum, one convert and one fma per row and block,
// blocks in order), so both variants give the same floats. Sets of 8 rows are taken NG at a time inside
// the layout's tiles of 4, against MB x rows at a time: the NG x 8 rows' codes stay in L1 while every x
// row passes over them.
#include <immintrin.h>

#include <algorithm>
#include <vector>

#include "cpu/quant_formats.h"
#include "cpu/quant_rows8_driver.h"

namespace mpt {
namespace {

constexpr int kGroupBytes = 128;  // a set's codes for one group of 32 k: 8 rows x 32 k

template <QFormat FMT>
struct Rows8Vnni {
  static constexpr bool kNf4 = FMT == QFormat::Nf4;
  const QWeight& w;
  const Q8Rows& x;
  const std::vector<int32_t>& init;  // [M, KB]: -8 (nf4: -64) x the block's x code sum
  const float* bias;
  float* y;

  // x rows m0 .. m0 + MB - 1 against sets n8 .. n8 + NG - 1, which lie in a layout tile of `ng` sets: from
  // set n8's first unit, set n8 + p's group b is unit b * ng + p.
  template <int NG, int MB>
  void tile(int64_t n8, int64_t ng, int64_t m0) const {
    const int64_t KB = x.KB, Kp = KB * 32, S = w.N / 8;
    const __m512i lo4 = _mm512_set1_epi8(15);
    const __m512i table = _mm512_add_epi8(
        _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(kNf4Int8))), _mm512_set1_epi8(kNf4CodeOffset));
    // x dwords (4 k each) for the low / high nibbles of a group's first and second 64 bytes
    const __m512i ia = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    const __m512i ib = _mm512_add_epi32(ia, _mm512_set1_epi32(4)), ic = _mm512_add_epi32(ia, _mm512_set1_epi32(2)),
                  id = _mm512_add_epi32(ia, _mm512_set1_epi32(6));
    const uint8_t* codes = w.data + rows8_unit(n8, 0, S, KB) * kGroupBytes;
    const int shift = kNf4 ? __builtin_ctzll(w.blocksize) : 0;  // nf4_q8_ok: a power of two
    const int64_t C = kNf4 ? w.K >> shift : 0;                   // nf4 blocks a row
    const uint16_t* sc16 = kNf4 ? nullptr : w.scale16 + rows8_unit(n8, 0, S, KB) * 8;
    const float* am = kNf4 ? w.scale + rows8_unit(n8, 0, S, C) * 8 : nullptr;
    __m256 acc[MB][NG];
    for (int m = 0; m < MB; ++m)
      for (int p = 0; p < NG; ++p) acc[m][p] = _mm256_setzero_ps();
    for (int64_t b = 0; b < KB; ++b) {
      __m512i lo[NG][2], hi[NG][2];
      __m256 sw[NG];
      for (int p = 0; p < NG; ++p) {
        const uint8_t* g = codes + (b * ng + p) * kGroupBytes;
        for (int h = 0; h < 2; ++h) {
          const __m512i v = _mm512_loadu_si512(g + 64 * h);
          lo[p][h] = _mm512_and_si512(v, lo4), hi[p][h] = _mm512_and_si512(_mm512_srli_epi16(v, 4), lo4);
          if (kNf4) lo[p][h] = _mm512_shuffle_epi8(table, lo[p][h]), hi[p][h] = _mm512_shuffle_epi8(table, hi[p][h]);
        }
        // nf4: absmax here, its 1 / kNf4IntMax folded into x's d below
        sw[p] = kNf4 ? _mm256_loadu_ps(am + (((b * 32) >> shift) * ng + p) * 8)
                     : _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sc16 + (b * ng + p) * 8)));
      }
      for (int m = 0; m < MB; ++m) {
        const int64_t i = (m0 + m) * KB + b;
        const __m512i xb = _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.q.data() + (m0 + m) * Kp + b * 32)));
        const __m512i xa = _mm512_permutexvar_epi32(ia, xb), xh = _mm512_permutexvar_epi32(ib, xb),
                      xc = _mm512_permutexvar_epi32(ic, xb), xd = _mm512_permutexvar_epi32(id, xb);
        const __m512i start = _mm512_maskz_set1_epi32(0x00ff, init[i]);
        const float d = kNf4 ? x.d[i] * kNf4IntScale : x.d[i];
        const __m256 dv = _mm256_set1_ps(d);
        for (int p = 0; p < NG; ++p) {
          __m512i s = _mm512_dpbusd_epi32(start, lo[p][0], xa);
          s = _mm512_dpbusd_epi32(s, hi[p][0], xh);
          s = _mm512_dpbusd_epi32(s, lo[p][1], xc);
          s = _mm512_dpbusd_epi32(s, hi[p][1], xd);
          const __m256i s32 = _mm256_add_epi32(_mm512_castsi512_si256(s), _mm512_extracti64x4_epi64(s, 1));
          acc[m][p] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s32), _mm256_mul_ps(sw[p], dv), acc[m][p]);
        }
      }
    }
    for (int p = 0; p < NG; ++p) {
      const __m256 bv = bias ? _mm256_loadu_ps(bias + (n8 + p) * 8) : _mm256_setzero_ps();
      for (int m = 0; m < MB; ++m) _mm256_storeu_ps(y + (m0 + m) * w.N + (n8 + p) * 8, _mm256_add_ps(acc[m][p], bv));
    }
  }

  // Every x row against sets n8 .. n8 + NG - 1 (of a layout tile of ng sets).
  template <int NG>
  void sets(int64_t n8, int64_t ng) const {
    int64_t m0 = 0;
    if constexpr (NG == 4) {  // (taken for one x row)
      for (; m0 < x.M; ++m0) tile<NG, 1>(n8, ng, m0);
    } else {
      constexpr int MB = 4;
      for (; m0 + MB <= x.M; m0 += MB) tile<NG, MB>(n8, ng, m0);
      switch (x.M - m0) {
        case 1: tile<NG, 1>(n8, ng, m0); break;
        case 2: tile<NG, 2>(n8, ng, m0); break;
        case 3: tile<NG, 3>(n8, ng, m0); break;
        default: break;
      }
    }
  }

  auto make_worker() {
    return [this](int64_t t0, int64_t t1) {  // sets t0 .. t1 - 1, whole layout tiles
      const int64_t S = w.N / 8;
      for (int64_t t = t0; t < t1; t += kRows8TileSets) {
        const int64_t ng = rows8_tile_sets(t, S);
        if (x.M == 1 && ng == 4) {  // one x row: all 4 sets a pass (one stream of codes, of scales)
          sets<4>(t, ng);
          continue;
        }
        int64_t p = 0;
        for (; p + 2 <= ng; p += 2) sets<2>(t + p, ng);
        if (p < ng) sets<1>(t + p, ng);
      }
    };
  }
};

}  // namespace

void qmatmul_q8_rows8_avx512(const QWeight& w, const Q8Rows& x, const float* bias, float* y) {
  run_rows8<Rows8Vnni>(w, x, bias, y);
}

}  // namespace mpt
