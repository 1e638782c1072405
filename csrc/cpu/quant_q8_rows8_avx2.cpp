// q8 activations x int4 / nf4 weights in the rows8 layout (quant_formats.h) on AVX2, any number of x rows: the
// weights arrive 8 rows interleaved per 32 k, so one 32-byte load is 8 rows x 4 k (low nibbles) and 8 rows x
// 4 other k (high nibbles), and each x row's 4 codes broadcast to every 32-bit lane make pmaddubsw give each
// row's pair sums in its own lane: no horizontal adds and no per-call decode into panels (what the pair
// kernel and the panels pay on the row layout). A tile is up to 2 x rows x 4 groups (32 output rows, one
// layout tile: its codes and its scales each one contiguous stream, block after block); per
// block the int16 pair sums of the 4 loads add in int16 (8 x 2 x 15 x 127 = 30480 < 32767), one pmaddwd
// leaves one int32 per row, the -8 offset comes in as -8 x the x block's code sum (exact), and one fma per
// block adds scale x d x sum into the row's float lane, blocks in order. nf4: the nibbles are looked up as
// kNf4Int8 + 64 (1..127) by a byte shuffle, pair sums reach 2 x 127 x 127 so each widens to int32 on its own,
// the offset is -64 x the code sum, and a block's scale is its nf4 block's absmax / kNf4IntMax.
#include <immintrin.h>

#include <algorithm>
#include <vector>

#include "cpu/quant_formats.h"
#include "cpu/quant_rows8_driver.h"

namespace mpt {
namespace {

constexpr int kGroupBytes = 128;  // a group's codes for one block: 8 rows x 32 k
constexpr int kTileGroups = kRows8TileSets;  // 8-row sets a tile: the layout's tile
constexpr int kTileRows = 2;      // x rows a tile

template <QFormat FMT>
struct Rows8 {
  static constexpr bool kReadsInt8 = false;
  static constexpr bool kNf4 = FMT == QFormat::Nf4;
  const QWeight& w;
  const Q8Rows& x;
  const std::vector<int32_t>& init;  // [M, KB]: -8 (nf4: -64) x the block's x code sum
  const float* bias;
  float* y;

  // x rows m0 .. m0 + MB - 1 against groups g0 .. g0 + NG - 1.
  template <int NG, int MB>
  void tile(int64_t g0, int64_t m0) const {
    const int64_t KB = x.KB, Kp = KB * 32;
    const __m256i lo4 = _mm256_set1_epi8(15), ones = _mm256_set1_epi16(1);
    const __m256i table = _mm256_add_epi8(
        _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(kNf4Int8))),
        _mm256_set1_epi8(kNf4CodeOffset));
    const uint8_t* codes = w.data + g0 * KB * kGroupBytes;  // the layout tile of sets g0 .. g0 + NG - 1
    // k per scale: nf4's blocksize (nf4_q8_ok: a power of two), int4's group (int4_group_ok)
    const int shift = __builtin_ctzll(kNf4 ? w.blocksize : w.group);
    const int64_t C = kNf4 ? w.K >> shift : int4_groups(w.K, w.group);  // scales a row
    __m256 acc[MB][NG];
    for (int m = 0; m < MB; ++m)
      for (int p = 0; p < NG; ++p) acc[m][p] = _mm256_setzero_ps();
    for (int64_t b = 0; b < KB; ++b) {
      __m256i sum[MB][NG];
      for (int q = 0; q < 4; ++q) {
        __m256i xa[MB], xb[MB];  // x codes of k 4q..4q+3 and 16+4q..16+4q+3, in every lane
        for (int m = 0; m < MB; ++m) {
          const int8_t* xp = x.q.data() + (m0 + m) * Kp + b * 32 + 4 * q;
          int32_t a, c;
          __builtin_memcpy(&a, xp, 4);
          __builtin_memcpy(&c, xp + 16, 4);
          xa[m] = _mm256_set1_epi32(a), xb[m] = _mm256_set1_epi32(c);
        }
        for (int p = 0; p < NG; ++p) {
          const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes + (b * NG + p) * kGroupBytes) + q);
          __m256i lo = _mm256_and_si256(v, lo4), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), lo4);
          if (kNf4) lo = _mm256_shuffle_epi8(table, lo), hi = _mm256_shuffle_epi8(table, hi);
          for (int m = 0; m < MB; ++m) {
            if (kNf4) {
              const __m256i pr = _mm256_add_epi32(_mm256_madd_epi16(_mm256_maddubs_epi16(lo, xa[m]), ones),
                                                  _mm256_madd_epi16(_mm256_maddubs_epi16(hi, xb[m]), ones));
              sum[m][p] = q == 0 ? pr : _mm256_add_epi32(sum[m][p], pr);
            } else {
              const __m256i pr = _mm256_add_epi16(_mm256_maddubs_epi16(lo, xa[m]), _mm256_maddubs_epi16(hi, xb[m]));
              sum[m][p] = q == 0 ? pr : _mm256_add_epi16(sum[m][p], pr);
            }
          }
        }
      }
      for (int p = 0; p < NG; ++p) {
        // nf4: absmax here, its 1 / kNf4IntMax folded into x's d below
        const __m256 sw =
            kNf4 ? _mm256_loadu_ps(w.scale + (g0 * C + ((b * 32) >> shift) * NG + p) * 8)
                 : _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w.scale16 + (g0 * C + ((b * 32) >> shift) * NG + p) * 8)));
        for (int m = 0; m < MB; ++m) {
          const int64_t i = (m0 + m) * KB + b;
          const __m256i dot = kNf4 ? sum[m][p] : _mm256_madd_epi16(sum[m][p], ones);
          const __m256i s32 = _mm256_add_epi32(dot, _mm256_set1_epi32(init[i]));
          const float d = kNf4 ? x.d[i] * kNf4IntScale : x.d[i];
          acc[m][p] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s32), _mm256_mul_ps(sw, _mm256_set1_ps(d)), acc[m][p]);
        }
      }
    }
    for (int p = 0; p < NG; ++p) {
      const __m256 bv = bias ? _mm256_loadu_ps(bias + (g0 + p) * 8) : _mm256_setzero_ps();
      for (int m = 0; m < MB; ++m) _mm256_storeu_ps(y + (m0 + m) * w.N + (g0 + p) * 8, _mm256_add_ps(acc[m][p], bv));
    }
  }

  template <int NG>
  void groups(int64_t g0) const {
    int64_t m0 = 0;
    for (; m0 + kTileRows <= x.M; m0 += kTileRows) tile<NG, kTileRows>(g0, m0);
    if (m0 < x.M) tile<NG, 1>(g0, m0);
  }

  auto make_worker() {
    return [this](int64_t g0, int64_t g1) {  // sets g0 .. g1 - 1, whole layout tiles
      for (int64_t g = g0; g < g1; g += kTileGroups) {
        switch (rows8_tile_sets(g, w.N / 8)) {
          case 1: groups<1>(g); break;
          case 2: groups<2>(g); break;
          case 3: groups<3>(g); break;
          default: groups<4>(g); break;
        }
      }
    };
  }
};

}  // namespace

void qmatmul_q8_rows8_avx2(const QWeight& w, const Q8Rows& x, const float* bias, float* y) {
  run_rows8<Rows8>(w, x, bias, y);
}

}  // namespace mpt
