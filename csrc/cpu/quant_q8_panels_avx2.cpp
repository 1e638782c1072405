// q8 activations x int8 / int4 / nf4 weights on AVX2 for many x rows (prefill, large batches): each thread
// decodes 8 weight rows at a time into a panel, 4 panels at a time, then multiplies every x row against
// them, 2 x rows x 32 output rows a tile, with no horizontal adds. The pair kernel
// (quant_q8_pairs_avx2.cpp) read every x row again for each output row (x of a 512-token prompt is 1-4
// MB, past L2); here x is read once per 32 output rows. The pair kernel's layout-free reads still win for
// int4 / nf4 below 16 x rows, where decoding a panel is not shared by enough rows; int8's q8_rows below 6.
//
// Panel of rows n0..n0+7, per block b of 32 k: 8 vectors of 32 bytes, vector i = the codes of k 4i..4i+3
// for row 0, then row 1, ... row 7; and the 8 rows' block scales as float. One x row's 4 codes of k
// 4i..4i+3 broadcast to every 32-bit lane make pmaddubsw give each row's two pair sums in its lane.
// int4: codes 0..15 (unsigned, pmaddubsw's unsigned operand); the 8 vectors' results add in int16 (8 x 2 x
// 15 x 127 = 30480 < 32767), one pmaddwd leaves one int32 sum per row, and the -8 offset comes in as -8 x
// the x block's code sum, an exact integer, as in the pair kernel. nf4: codes are kNf4Int8 + 64 (1..127,
// unsigned) and the offset comes in as -64 x the code sum; pair sums reach 2 x 127 x 127, so each
// vector's widen to int32 (pmaddwd) before they add. int8: codes signed, their magnitudes the unsigned
// operand and their signs moved onto x, widened per vector as nf4's, with the row's scb / 127 as every
// block's scale (the reference applies it after the sum: the same value to float32 rounding).
#include <immintrin.h>

#include <algorithm>
#include <cstdlib>
#include <memory>
#include <new>
#include <vector>

#include "cpu/quant_formats.h"
#include "cpu/thread_pool.h"

namespace mpt {
namespace {

constexpr int kPanelRows = 8;
constexpr int kTilePanels = 4;  // panels a tile: 32 output rows
constexpr int kTileRows = 2;    // x rows a tile: 8 int16 sums, 2 broadcasts, a code vector (of 16 ymm)

struct AlignedFree {
  void operator()(void* p) const { std::free(p); }
};

// A thread's panels: kTilePanels x KB blocks x (256 code bytes + 8 float scales).
struct Panels {
  int64_t KB = 0;
  std::unique_ptr<uint8_t, AlignedFree> code_bytes;
  std::unique_ptr<float, AlignedFree> scale_floats;
  explicit Panels(int64_t kb) : KB(kb) {
    code_bytes.reset(static_cast<uint8_t*>(std::aligned_alloc(32, static_cast<size_t>(kb) * 256 * kTilePanels)));
    scale_floats.reset(static_cast<float*>(std::aligned_alloc(32, static_cast<size_t>(kb) * 32 * kTilePanels)));
    if (!code_bytes || !scale_floats) throw std::bad_alloc();
  }
  uint8_t* codes(int p) const { return code_bytes.get() + p * KB * 256; }
  float* scales(int p) const { return scale_floats.get() + p * KB * 8; }
};

// 4 x 4 transpose of 32-bit lanes: o[q] = lane q of a, b, c, d.
inline void transpose4(__m128i a, __m128i b, __m128i c, __m128i d, __m128i* o) {
  const __m128i t0 = _mm_unpacklo_epi32(a, b), t1 = _mm_unpackhi_epi32(a, b);
  const __m128i t2 = _mm_unpacklo_epi32(c, d), t3 = _mm_unpackhi_epi32(c, d);
  o[0] = _mm_unpacklo_epi64(t0, t2), o[1] = _mm_unpackhi_epi64(t0, t2);
  o[2] = _mm_unpacklo_epi64(t1, t3), o[3] = _mm_unpackhi_epi64(t1, t3);
}

// A block of 8 rows into its 8 panel vectors: lo[r] / hi[r] hold row r's codes of k 0..15 / 16..31.
inline void store_block(const __m128i* lo, const __m128i* hi, uint8_t* out) {
  __m128i a[4], c[4], e[4], g[4];
  transpose4(lo[0], lo[1], lo[2], lo[3], a);
  transpose4(lo[4], lo[5], lo[6], lo[7], c);
  transpose4(hi[0], hi[1], hi[2], hi[3], e);
  transpose4(hi[4], hi[5], hi[6], hi[7], g);
  __m256i* dst = reinterpret_cast<__m256i*>(out);
  for (int q = 0; q < 4; ++q) {
    _mm256_store_si256(dst + q, _mm256_set_m128i(c[q], a[q]));
    _mm256_store_si256(dst + 4 + q, _mm256_set_m128i(g[q], e[q]));
  }
}

// Rows n0 .. n0 + rows - 1 (rows <= 8) of an int4 weight into a panel; missing rows get code 8 (zero) and
// scale 0. In the rows8 layout (n0 a multiple of 8, 8 rows) a group's 4 vectors are the panel's, nibbles apart.
void pack_panel_int4(const QWeight& w, int64_t n0, int rows, uint8_t* codes, float* scales) {
  const int64_t KB = int4_groups(w.K);
  if (w.rows8) {
    const __m256i lo4v = _mm256_set1_epi8(15);
    const int64_t S = w.N / kPanelRows, n8 = n0 / kPanelRows, step = rows8_tile_sets(n8, S);  // units a group
    const uint8_t* src = w.data + rows8_unit(n8, 0, S, KB) * 128;
    const uint16_t* sc = w.scale16 + rows8_unit(n8, 0, S, KB) * 8;
    for (int64_t b = 0; b < KB; ++b) {
      __m256i* dst = reinterpret_cast<__m256i*>(codes + b * 256);
      for (int q = 0; q < 4; ++q) {
        const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + b * step * 128) + q);
        _mm256_store_si256(dst + q, _mm256_and_si256(v, lo4v));
        _mm256_store_si256(dst + 4 + q, _mm256_and_si256(_mm256_srli_epi16(v, 4), lo4v));
      }
      _mm256_store_ps(scales + b * 8, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sc + b * step * 8))));
    }
    return;
  }
  const __m128i lo4 = _mm_set1_epi8(15), zero_codes = _mm_set1_epi8(0x88);
  const uint8_t* src[kPanelRows];
  const uint16_t* sc[kPanelRows];
  for (int r = 0; r < kPanelRows; ++r) {
    src[r] = r < rows ? w.data + (n0 + r) * KB * 16 : nullptr;
    sc[r] = r < rows ? w.scale16 + (n0 + r) * KB : nullptr;
  }
  for (int64_t b = 0; b < KB; ++b) {
    __m128i lo[kPanelRows], hi[kPanelRows];  // row r's quads 0-3 (k 0..15) and 4-7 (k 16..31)
    alignas(16) uint16_t h[kPanelRows];
    for (int r = 0; r < kPanelRows; ++r) {
      const __m128i v = src[r] ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(src[r] + b * 16)) : zero_codes;
      lo[r] = _mm_and_si128(v, lo4);
      hi[r] = _mm_and_si128(_mm_srli_epi16(v, 4), lo4);
      h[r] = sc[r] ? sc[r][b] : 0;
    }
    store_block(lo, hi, codes + b * 256);
    _mm256_store_ps(scales + b * 8, _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(h))));
  }
}

// int8: row r's 32 codes of a block as they are (the last block zero-padded past K); every block's scale
// is the row's scb / 127. Missing rows: 0 and 0.
void pack_panel_int8(const QWeight& w, int64_t n0, int rows, uint8_t* codes, float* scales) {
  const int64_t KB = (w.K + 31) / 32;
  alignas(32) float rf[kPanelRows];
  for (int r = 0; r < kPanelRows; ++r) rf[r] = r < rows ? row_factor(w, n0 + r) : 0.f;
  const __m256 rfv = _mm256_load_ps(rf);
  for (int64_t b = 0; b < KB; ++b) {
    __m128i lo[kPanelRows], hi[kPanelRows];
    const int64_t have = std::min<int64_t>(32, w.K - b * 32);
    for (int r = 0; r < kPanelRows; ++r) {
      if (r >= rows) {
        lo[r] = hi[r] = _mm_setzero_si128();
        continue;
      }
      const uint8_t* src = w.data + (n0 + r) * w.K + b * 32;
      alignas(16) uint8_t t[32] = {};
      if (have < 32) {
        std::copy(src, src + have, t);
        src = t;
      }
      lo[r] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src));
      hi[r] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 16));
    }
    store_block(lo, hi, codes + b * 256);
    _mm256_store_ps(scales + b * 8, rfv);
  }
}

// nf4 (bitsandbytes order: even k in the high nibble), codes looked up as kNf4Int8 + kNf4CodeOffset; a block's
// scale is its nf4 block's absmax / kNf4IntMax (nf4_q8_ok: blocks of 2^shift >= 32 k that divide K).
// Missing rows: 0 and 0.
void pack_panel_nf4(const QWeight& w, int64_t n0, int rows, uint8_t* codes, float* scales) {
  const int64_t KB = w.K / 32;
  const int shift = __builtin_ctzll(w.blocksize);
  const __m128i lo4 = _mm_set1_epi8(15);
  const __m128i table = _mm_add_epi8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(kNf4Int8)), _mm_set1_epi8(kNf4CodeOffset));
  if (w.rows8) {  // n0 a multiple of 8, 8 rows: int4's rows8 nibbles, looked up; the 8 rows' absmax side by side
    const __m256i lo4v = _mm256_set1_epi8(15), tablev = _mm256_broadcastsi128_si256(table);
    const int64_t S = w.N / kPanelRows, n8 = n0 / kPanelRows, C = w.K >> shift;
    const int64_t step = rows8_tile_sets(n8, S);  // units a group (or block)
    const uint8_t* src = w.data + rows8_unit(n8, 0, S, KB) * 128;
    const float* am = w.scale + rows8_unit(n8, 0, S, C) * 8;
    for (int64_t b = 0; b < KB; ++b) {
      __m256i* dst = reinterpret_cast<__m256i*>(codes + b * 256);
      for (int q = 0; q < 4; ++q) {
        const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + b * step * 128) + q);
        _mm256_store_si256(dst + q, _mm256_shuffle_epi8(tablev, _mm256_and_si256(v, lo4v)));
        _mm256_store_si256(dst + 4 + q, _mm256_shuffle_epi8(tablev, _mm256_and_si256(_mm256_srli_epi16(v, 4), lo4v)));
      }
      _mm256_store_ps(scales + b * 8, _mm256_mul_ps(_mm256_loadu_ps(am + ((b * 32) >> shift) * step * 8), _mm256_set1_ps(kNf4IntScale)));
    }
    return;
  }
  for (int64_t b = 0; b < KB; ++b) {
    __m128i lo[kPanelRows], hi[kPanelRows];
    alignas(32) float s[kPanelRows];
    for (int r = 0; r < kPanelRows; ++r) {
      if (r >= rows) {
        lo[r] = hi[r] = _mm_setzero_si128();
        s[r] = 0.f;
        continue;
      }
      const int64_t f = (n0 + r) * w.K + b * 32;
      const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w.data + f / 2));
      const __m128i ev = _mm_shuffle_epi8(table, _mm_and_si128(_mm_srli_epi16(v, 4), lo4));
      const __m128i od = _mm_shuffle_epi8(table, _mm_and_si128(v, lo4));
      lo[r] = _mm_unpacklo_epi8(ev, od);  // k 0..15
      hi[r] = _mm_unpackhi_epi8(ev, od);  // k 16..31
      s[r] = w.scale[f >> shift] * kNf4IntScale;
    }
    store_block(lo, hi, codes + b * 256);
    _mm256_store_ps(scales + b * 8, _mm256_load_ps(s));
  }
}

// x rows m0 .. m0 + MB - 1 against NP panels: out[m][p] lane r = sum_b scale * d * (dot + init) for row
// 8p + r. Each x row's broadcast codes feed NP panels, whose int16 sums stay in registers for a block.
template <QFormat FMT, int NP, int MB>
void panel_tile(const Panels& pn, const Q8Rows& x, const int32_t* init, int64_t m0, __m256* out) {
  constexpr bool I4 = FMT == QFormat::Int4, NF4 = FMT == QFormat::Nf4;
  const int64_t KB = pn.KB, Kp = KB * 32;
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 acc[MB][NP];
  for (int m = 0; m < MB; ++m)
    for (int p = 0; p < NP; ++p) acc[m][p] = _mm256_setzero_ps();
  for (int64_t b = 0; b < KB; ++b) {
    __m256i sum[MB][NP];  // int4: int16 pair sums; nf4, int8: int32
    for (int i = 0; i < 8; ++i) {  // k 4i .. 4i + 3 of the block
      __m256i xv[MB];
      for (int m = 0; m < MB; ++m) {
        int32_t quad;
        __builtin_memcpy(&quad, x.q.data() + (m0 + m) * Kp + b * 32 + 4 * i, 4);
        xv[m] = _mm256_set1_epi32(quad);
      }
      for (int p = 0; p < NP; ++p) {
        const __m256i wv = _mm256_load_si256(reinterpret_cast<const __m256i*>(pn.codes(p) + b * 256) + i);
        if (I4) {
          for (int m = 0; m < MB; ++m) {
            const __m256i prod = _mm256_maddubs_epi16(wv, xv[m]);
            sum[m][p] = i == 0 ? prod : _mm256_add_epi16(sum[m][p], prod);
          }
        } else if (NF4) {
          for (int m = 0; m < MB; ++m) {
            const __m256i prod = _mm256_madd_epi16(_mm256_maddubs_epi16(wv, xv[m]), ones);
            sum[m][p] = i == 0 ? prod : _mm256_add_epi32(sum[m][p], prod);
          }
        } else {
          const __m256i aw = _mm256_abs_epi8(wv);
          for (int m = 0; m < MB; ++m) {
            const __m256i prod = _mm256_madd_epi16(_mm256_maddubs_epi16(aw, _mm256_sign_epi8(xv[m], wv)), ones);
            sum[m][p] = i == 0 ? prod : _mm256_add_epi32(sum[m][p], prod);
          }
        }
      }
    }
    for (int m = 0; m < MB; ++m) {
      const __m256 d = _mm256_set1_ps(x.d[(m0 + m) * KB + b]);
      for (int p = 0; p < NP; ++p) {
        __m256i dot = sum[m][p];
        if (I4) dot = _mm256_madd_epi16(dot, ones);
        if (I4 || NF4) dot = _mm256_add_epi32(dot, _mm256_set1_epi32(init[(m0 + m) * KB + b]));
        const __m256 sd = _mm256_mul_ps(_mm256_load_ps(pn.scales(p) + b * 8), d);
        acc[m][p] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), sd, acc[m][p]);
      }
    }
  }
  for (int m = 0; m < MB; ++m)
    for (int p = 0; p < NP; ++p) out[m * kTilePanels + p] = acc[m][p];
}

template <QFormat FMT, int NP>
void panel_tiles(const Panels& pn, const Q8Rows& x, const int32_t* init, int64_t m0, int mb, __m256* out) {
  if (mb == 1) return panel_tile<FMT, NP, 1>(pn, x, init, m0, out);
  panel_tile<FMT, NP, kTileRows>(pn, x, init, m0, out);
}

template <QFormat FMT>
void panel_run(const QWeight& w, const Q8Rows& x, const float* bias, float* y) {
  const int64_t M = x.M, N = w.N, KB = x.KB;
  std::vector<int32_t> init;  // int4: -8 x each x block's code sum; nf4: -64 x
  if (FMT != QFormat::Int8) q8_block_sums(x, FMT == QFormat::Int4 ? -8 : -kNf4CodeOffset, init);
  struct Rows {
    const QWeight& w;
    const Q8Rows& x;
    const int32_t* init;
    const float* bias;
    float* y;
    auto make_worker() {
      return [this, pn = std::make_shared<Panels>(x.KB)](int64_t n0, int64_t n1) { run(*pn, n0, n1); };
    }
    void run(Panels& pn, int64_t n0, int64_t n1) const {
      constexpr int kRows = kPanelRows * kTilePanels;
      for (int64_t n = n0; n < n1; n += kRows) {
        const int rows = static_cast<int>(std::min<int64_t>(kRows, n1 - n));
        const int np = (rows + kPanelRows - 1) / kPanelRows;
        for (int p = 0; p < np; ++p) {
          const int pr = std::min(kPanelRows, rows - p * kPanelRows);
          if (FMT == QFormat::Int4) pack_panel_int4(w, n + p * kPanelRows, pr, pn.codes(p), pn.scales(p));
          else if (FMT == QFormat::Nf4) pack_panel_nf4(w, n + p * kPanelRows, pr, pn.codes(p), pn.scales(p));
          else pack_panel_int8(w, n + p * kPanelRows, pr, pn.codes(p), pn.scales(p));
        }
        alignas(32) float bias_rows[kRows] = {};
        if (bias) std::copy(bias + n, bias + n + rows, bias_rows);
        for (int64_t m0 = 0; m0 < x.M; m0 += kTileRows) {
          const int mb = static_cast<int>(std::min<int64_t>(kTileRows, x.M - m0));
          __m256 out[kTileRows * kTilePanels];
          switch (np) {
            case 1: panel_tiles<FMT, 1>(pn, x, init, m0, mb, out); break;
            case 2: panel_tiles<FMT, 2>(pn, x, init, m0, mb, out); break;
            case 3: panel_tiles<FMT, 3>(pn, x, init, m0, mb, out); break;
            default: panel_tiles<FMT, 4>(pn, x, init, m0, mb, out); break;
          }
          for (int m = 0; m < mb; ++m) {
            alignas(32) float t[kRows];
            for (int p = 0; p < np; ++p)
              _mm256_store_ps(t + p * kPanelRows, _mm256_add_ps(out[m * kTilePanels + p], _mm256_load_ps(bias_rows + p * kPanelRows)));
            std::copy(t, t + rows, y + (m0 + m) * w.N + n);
          }
        }
      }
    }
  };
  constexpr int64_t kRows = kPanelRows * kTilePanels;
  const int64_t chunk = (decode_chunk(N) + kRows - 1) / kRows * kRows;
  for_row_chunks(N, chunk, Rows{w, x, init.data(), bias, y});
}

}  // namespace

void qmatmul_q8_panels_avx2(const QWeight& w, const Q8Rows& x, const float* bias, float* y) {
  if (w.fmt == QFormat::Int8) return panel_run<QFormat::Int8>(w, x, bias, y);
  if (w.fmt == QFormat::Nf4) return panel_run<QFormat::Nf4>(w, x, bias, y);
  panel_run<QFormat::Int4>(w, x, bias, y);
}

}  // namespace mpt
