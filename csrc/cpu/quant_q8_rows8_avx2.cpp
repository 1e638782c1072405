// q8 activations x int4 weights in the rows8 layout (quant_formats.h) on AVX2, any number of x rows: the
// weights arrive 8 rows interleaved per 32 k, so one 32-byte load is 8 rows x 4 k (low nibbles) and 8 rows x
// 4 other k (high nibbles), and each x row's 4 codes broadcast to every 32-bit lane make pmaddubsw give each
// row's pair sums in its own lane: no horizontal adds and no per-call decode into panels (what the pair
// kernel and the panels pay on the row layout). A tile is up to 2 x rows x 4 groups (32 output rows); per
// block the int16 pair sums of the 4 loads add in int16 (8 x 2 x 15 x 127 = 30480 < 32767), one pmaddwd
// leaves one int32 per row, the -8 offset comes in as -8 x the x block's code sum (exact), and one fma per
// block adds scale x d x sum into the row's float lane, blocks in order.
#include <immintrin.h>

#include <algorithm>
#include <vector>

#include "cpu/quant_formats.h"
#include "cpu/thread_pool.h"

namespace mpt {
namespace {

constexpr int kGroupBytes = 128;  // a group's codes for one block: 8 rows x 32 k
constexpr int kTileGroups = 4;    // groups (8 output rows each) a tile
constexpr int kTileRows = 2;      // x rows a tile

struct Rows8 {
  const QWeight& w;
  const Q8Rows& x;
  const std::vector<int32_t>& init;  // [M, KB]: -8 x the block's x code sum
  const float* bias;
  float* y;

  // x rows m0 .. m0 + MB - 1 against groups g0 .. g0 + NG - 1.
  template <int NG, int MB>
  void tile(int64_t g0, int64_t m0) const {
    const int64_t KB = x.KB, Kp = KB * 32;
    const __m256i lo4 = _mm256_set1_epi8(15), ones = _mm256_set1_epi16(1);
    const uint8_t* codes = w.data + g0 * KB * kGroupBytes;
    const uint16_t* scales = w.scale16 + g0 * KB * 8;
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
          const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes + (p * KB + b) * kGroupBytes) + q);
          const __m256i lo = _mm256_and_si256(v, lo4), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), lo4);
          for (int m = 0; m < MB; ++m) {
            const __m256i pr = _mm256_add_epi16(_mm256_maddubs_epi16(lo, xa[m]), _mm256_maddubs_epi16(hi, xb[m]));
            sum[m][p] = q == 0 ? pr : _mm256_add_epi16(sum[m][p], pr);
          }
        }
      }
      for (int p = 0; p < NG; ++p) {
        const __m256 sw = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(scales + (p * KB + b) * 8)));
        for (int m = 0; m < MB; ++m) {
          const int64_t i = (m0 + m) * KB + b;
          const __m256i s32 = _mm256_add_epi32(_mm256_madd_epi16(sum[m][p], ones), _mm256_set1_epi32(init[i]));
          acc[m][p] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s32), _mm256_mul_ps(sw, _mm256_set1_ps(x.d[i])), acc[m][p]);
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
    return [this](int64_t g0, int64_t g1) {
      for (int64_t g = g0; g < g1; g += kTileGroups) {
        switch (std::min<int64_t>(kTileGroups, g1 - g)) {
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
  std::vector<int32_t> init(static_cast<size_t>(x.M * x.KB));
  for (int64_t i = 0; i < x.M * x.KB; ++i) {
    int32_t s = 0;
    for (int j = 0; j < 32; ++j) s += x.q[static_cast<size_t>(i * 32 + j)];
    init[static_cast<size_t>(i)] = -8 * s;
  }
  const int64_t groups = w.N / 8;
  const int64_t chunk = (std::max<int64_t>(decode_chunk(w.N) / 8, 1) + kTileGroups - 1) / kTileGroups * kTileGroups;
  for_row_chunks(groups, chunk, Rows8{w, x, init, bias, y});
}

}  // namespace mpt
