// q8 activations on AMX-INT8 tiles for a few x rows (decode batches): y = x @ W^T (+ bias) with x in
// q8 blocks of 32 (Q8Rows' codes and scales, avx512_lanes::quantize_block32) and the weight as signed
// int8 codes (int8: cb; int4: q - 8; nf4: kNf4Int8[q]), i.e. the q8 path's arithmetic (quant_formats.h):
//   y[m, n] = row_factor(n) * sum over blocks b, in order, of dot_b(w codes, x codes) * (dw[n, b] * d[m, b])
// with exact int32 block dots and one fused multiply-add per block. q8_wide and the GEMM tiles add the
// same block terms in another float order, so rows agree with them to float32 rounding, not bit for bit.
//
// Why tiles for a few rows (qmatmul sends int8 from 4 rows, int4 / nf4 from 8, up to 32): the vpdpbusd
// kernels run 64 dot-product instructions per 512 weights and x row, so at 8-16 rows a step of decoding
// is compute-bound (docs/benchmarks.md, "AMX-INT8"); one TDPBSSD does 16 weight
// rows x 16 x rows x 32 k, and what is left on the vector ports is unpacking the codes (shared by all
// x rows) and the per-block float update (3 operations per weight row and block, for up to 16 x rows).
//
// Layout: the weight is tile A: 16 weight rows decoded 512 k at a time into a panel in L1, a tile row
// the 32 codes of one block in k order. x is tile B: row r of a block's tile holds the dword of codes
// k 4r..4r+3 of each of 16 x rows. One int32 tile C per block and x tile goes through L1 into float
// accumulators (16 weight rows x 16 x rows, in registers), transposed into y at the end. Four C tiles
// are in flight at a time (4 blocks, or 2 blocks x 2 x tiles), and consecutive blocks alternate
// between two A and two B tiles, so one block's products need not wait for the last one's. Up to 8 x
// rows, one product covers two blocks (pack_x_pairs): half the tile loads, products and stores, whose
// cost (~45 cycles per C tile here) does not shrink with the x rows.
#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "cpu/amx_tile_config.h"
#include "cpu/q8_lanes_avx512.h"
#include "cpu/quant_formats.h"
#include "cpu/quant_gemm.h"
#include "cpu/thread_pool.h"
#include "cpu/tile_store_avx512.h"

namespace mpt {
namespace {

constexpr int64_t kRows = 16;        // weight rows of a tile; x rows of an x tile
constexpr int64_t kBlock = 32;       // k of a q8 block
constexpr int kChunkBlocks = 4;      // blocks decoded at a time: 128 k of each weight row
constexpr int64_t kXTile = 8 * 64;   // one block of 16 x rows: 8 tile rows of 16 dwords
constexpr int64_t kSlab = 16;        // blocks decoded at a time (512 k: the panel stays in L1)

// Tiles 0-3: int32 C (16 x 16); 4-5: A, the weight (16 rows x 32 bytes); 6-7: B, x (8 rows x 64 bytes).
// pairs (at most 8 x rows): A and B span two blocks, 16 rows x 64 bytes each.
void configure(bool pairs) {
  TileConfig c;
  for (int t = 0; t < 4; ++t) c.colsb[t] = 64, c.rows[t] = kRows;
  for (int t = 4; t < 6; ++t) c.colsb[t] = pairs ? 2 * kBlock : kBlock, c.rows[t] = kRows;
  for (int t = 6; t < 8; ++t) c.colsb[t] = 64, c.rows[t] = pairs ? kBlock / 2 : kBlock / 4;
  load_tile_config(c);
}

// Quantizes every q8 block (m, b) of x and scatters its 8 code dwords into tile rows 0-7 from
// xq + place(m, b).first (one dword per 64-byte row), its scale to xd[place(m, b).second]. bytes / scales:
// the sizes of xq / xd, zeroed first (absent rows and blocks stay 0).
template <class Place>
void pack_blocks(const float* x, int64_t M, int64_t K, int64_t KB, int8_t* xq, int64_t bytes, float* xd,
                 int64_t scales, Place place) {
  std::memset(xq, 0, static_cast<size_t>(bytes));
  std::fill(xd, xd + scales, 0.f);
  parallel_for(M, 1, [&](int64_t m0, int64_t m1) {
    const __m256i rows = _mm256_setr_epi32(0, 16, 32, 48, 64, 80, 96, 112);  // dword r -> tile row r
    alignas(32) int8_t codes[kBlock];
    for (int64_t m = m0; m < m1; ++m)
      for (int64_t b = 0; b < KB; ++b) {
        int32_t sum;
        const auto [at, si] = place(m, b);
        xd[si] = avx512_lanes::quantize_block32(x + m * K + b * kBlock, K - b * kBlock, codes, sum);
        _mm256_i32scatter_epi32(xq + at, rows, _mm256_load_si256(reinterpret_cast<const __m256i*>(codes)), 4);
      }
  });
}

// x [M, K] -> for x tile t and block b: the tile (row r, slot j: dword r of x row 16t + j's block codes)
// at xq + (t * KB + b) * kXTile, and the block scales of its 16 rows at xd + (t * KB + b) * 16. Rows past
// M: codes 0, scale 0.
void pack_x(const float* x, int64_t M, int64_t K, int64_t KB, int8_t* xq, float* xd) {
  const int64_t MT = (M + kRows - 1) / kRows;
  pack_blocks(x, M, K, KB, xq, MT * KB * kXTile, xd, MT * KB * kRows, [KB](int64_t m, int64_t b) {
    const int64_t at = m / kRows * KB + b;
    return std::pair<int64_t, int64_t>(at * kXTile + m % kRows * 4, at * kRows + m % kRows);
  });
}

// At most kAmxQ8PairRows (8) x rows, two blocks a tile: for the pair of blocks 2p, 2p + 1, a 16 x 64-byte tile
// at xq + p * kPairTile whose rows 0-7 hold block 2p's dwords in slots 0-7 (x rows) and rows 8-15 block
// 2p + 1's in slots 8-15, zeros elsewhere; so one product over 64 k gives block 2p's dots in C lanes 0-7
// and block 2p + 1's in lanes 8-15. Scales at xd + 16 p: [block 2p's of x rows 0-7, block 2p + 1's].
constexpr int64_t kPairTile = 16 * 64;
void pack_x_pairs(const float* x, int64_t M, int64_t K, int64_t KB, int8_t* xq, float* xd) {
  const int64_t P = (KB + 1) / 2;
  pack_blocks(x, M, K, KB, xq, P * kPairTile, xd, P * kRows, [](int64_t m, int64_t b) {
    const int64_t h = b & 1;
    return std::pair<int64_t, int64_t>((b >> 1) * kPairTile + h * (8 * 64) + (h * 8 + m) * 4, (b >> 1) * kRows + h * 8 + m);
  });
}

// The decoded codes of 16 weight rows, kSlab blocks of each: row i's block b (32 bytes in k order) at
// codes + i * kStride + 32 b; its scale at sw[i * kSlab + b] (int8: unused).
constexpr int64_t kStride = kSlab * kBlock;
struct Panel {
  alignas(64) int8_t codes[kRows * kStride];
  alignas(64) float sw[kRows * kSlab];
};

// Blocks [s0, s0 + ns) of rows n0..n0+15 into the panel (block b at offset b - s0). Each load also
// prefetches the same bytes of the row 16 further on (the next tile's), so memory keeps streaming
// while the tile unit works on this one. Rows past N decode to 0.
template <QFormat FMT>
void decode_slab(const QWeight& w, int64_t n0, int64_t s0, int64_t ns, Panel& pn) {
  const int64_t K = w.K;
  const __m512i lo4 = _mm512_set1_epi8(15);
  // lo / hi hold k 0-15 / 16-31 of four blocks, one per 128-bit lane: interleave them per block
  const __m512i first = _mm512_setr_epi64(0, 1, 8, 9, 2, 3, 10, 11), second = _mm512_setr_epi64(4, 5, 12, 13, 6, 7, 14, 15);
  for (int64_t i = 0; i < kRows; ++i) {
    const int64_t n = n0 + i;
    int8_t* out = pn.codes + i * kStride;
    float* sw = pn.sw + i * kSlab;
    if (n >= w.N) {
      std::memset(out, 0, static_cast<size_t>(kStride));
      std::fill(sw, sw + kSlab, 0.f);
      continue;
    }
    for (int64_t c = 0; c < ns; c += kChunkBlocks) {
      const int64_t c0 = s0 + c;
      const int nb = static_cast<int>(std::min<int64_t>(kChunkBlocks, ns - c));
      __m512i lo, hi;
      if constexpr (FMT == QFormat::Int8) {
        const int8_t* p = reinterpret_cast<const int8_t*>(w.data) + n * K + c0 * kBlock;
        const int64_t left = K - c0 * kBlock;
        _mm_prefetch(reinterpret_cast<const char*>(p + kRows * K), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(p + kRows * K + 64), _MM_HINT_T0);
        _mm512_storeu_si512(out + kBlock * c, left >= 128 ? _mm512_loadu_si512(p) : _mm512_maskz_loadu_epi8(avx512_lanes::bytes_mask(left), p));
        _mm512_storeu_si512(out + kBlock * c + 64, left >= 128 ? _mm512_loadu_si512(p + 64) : _mm512_maskz_loadu_epi8(avx512_lanes::bytes_mask(left - 64), p + 64));
        continue;
      } else if constexpr (FMT == QFormat::Int4) {
        const int64_t G = int4_groups(K);
        const uint8_t* p = w.data + (n * G + c0) * 16;
        _mm_prefetch(reinterpret_cast<const char*>(p + kRows * G * 16), _MM_HINT_T0);
        const __m512i z = nb == kChunkBlocks ? _mm512_loadu_si512(p) : _mm512_maskz_loadu_epi8(avx512_lanes::bytes_mask(16 * nb), p);
        const __m512i eight = _mm512_set1_epi8(8);
        lo = _mm512_sub_epi8(_mm512_and_si512(z, lo4), eight);
        hi = _mm512_sub_epi8(_mm512_and_si512(_mm512_srli_epi16(z, 4), lo4), eight);
        if ((c & 31) == 0) _mm_prefetch(reinterpret_cast<const char*>(w.scale16 + (n + kRows) * G + c0), _MM_HINT_T0);
        const __m128i h = _mm_maskz_loadu_epi16(static_cast<__mmask8>((1u << nb) - 1), w.scale16 + n * G + c0);
        _mm_storeu_ps(sw + c, _mm_cvtph_ps(h));
      } else {  // nf4, K % 32 == 0 (nf4_q8_ok): a row starts on a byte; even k in the high nibbles
        const int64_t f = n * K + c0 * kBlock;
        const uint8_t* p = w.data + (f >> 1);
        _mm_prefetch(reinterpret_cast<const char*>(p + kRows * K / 2), _MM_HINT_T0);
        const __m512i z = nb == kChunkBlocks ? _mm512_loadu_si512(p) : _mm512_maskz_loadu_epi8(avx512_lanes::bytes_mask(16 * nb), p);
        const __m512i table = _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(kNf4Int8)));
        const __m512i ev = _mm512_shuffle_epi8(table, _mm512_and_si512(_mm512_srli_epi16(z, 4), lo4));
        const __m512i od = _mm512_shuffle_epi8(table, _mm512_and_si512(z, lo4));
        lo = _mm512_unpacklo_epi8(ev, od);
        hi = _mm512_unpackhi_epi8(ev, od);
        const int shift = __builtin_ctzll(w.blocksize);
        for (int j = 0; j < kChunkBlocks; ++j) sw[c + j] = j < nb ? w.scale[(f + j * kBlock) >> shift] * kNf4IntScale : 0.f;
      }
      _mm512_storeu_si512(out + kBlock * c, _mm512_permutex2var_epi64(lo, first, hi));
      _mm512_storeu_si512(out + kBlock * c + 64, _mm512_permutex2var_epi64(lo, second, hi));
    }
  }
}

// Slot C (tile C) = the dots of A tile A (one block of the panel) and B tile B (x tile xt).
// (GCC's tile intrinsics take tile numbers as literals, hence a macro.)
#define MPT_SLOT(C, A, B)              \
  do {                                 \
    _tile_loadd(B, xt, 64);            \
    _tile_zero(C);                     \
    _tile_dpbssd(C, A, B);             \
  } while (0)

// Slots 0..n-1 (n <= 4): the A tile at a + s * astep (panel rows, stride kStride) against the B tile at
// x0 + s * xstep into C tile s, A and B tiles alternating; then the C tiles into cbuf.
inline void four_slots(const int8_t* a, int64_t astep, const int8_t* x0, int64_t xstep, int n, int32_t (*cbuf)[256]) {
  const int8_t* xt = x0;
  _tile_loadd(4, a, kStride);
  MPT_SLOT(0, 4, 6);
  if (n > 1) { xt = x0 + xstep; _tile_loadd(5, a + astep, kStride); MPT_SLOT(1, 5, 7); }
  if (n > 2) { xt = x0 + 2 * xstep; _tile_loadd(4, a + 2 * astep, kStride); MPT_SLOT(2, 4, 6); }
  if (n > 3) { xt = x0 + 3 * xstep; _tile_loadd(5, a + 3 * astep, kStride); MPT_SLOT(3, 5, 7); }
  _tile_stored(0, cbuf[0], 64);
  if (n > 1) _tile_stored(1, cbuf[1], 64);
  if (n > 2) _tile_stored(2, cbuf[2], 64);
  if (n > 3) _tile_stored(3, cbuf[3], 64);
}

// The slots of a group: block j (of the group) against x tile t in slot j * MT + t. The four C tiles
// are all in flight before any goes through L1, so the tile unit and the vector ports overlap.
template <int MT>
inline void group_dots(const Panel& pn, int64_t p0, int64_t b0, int nj, const int8_t* xq, int64_t KB,
                       int32_t (*cbuf)[256]) {
  const int8_t* a = pn.codes + kBlock * p0;
  const int8_t* x0 = xq + b0 * kXTile;
  if constexpr (MT == 1) {  // blocks j = 0..3 in slots 0..3
    four_slots(a, kBlock, x0, kXTile, nj, cbuf);
  } else {  // blocks j = 0, 1 (A tiles 4, 5) x x tiles t = 0, 1 (B tiles 6, 7) in slot 2j + t
    const int8_t* xt = x0;
    _tile_loadd(4, a, kStride);
    MPT_SLOT(0, 4, 6);
    xt = x0 + KB * kXTile;
    MPT_SLOT(1, 4, 7);
    if (nj > 1) {
      _tile_loadd(5, a + kBlock, kStride);
      xt = x0 + kXTile;
      MPT_SLOT(2, 5, 6);
      xt = x0 + (KB + 1) * kXTile;
      MPT_SLOT(3, 5, 7);
    }
    _tile_stored(0, cbuf[0], 64);
    _tile_stored(1, cbuf[1], 64);
    if (nj > 1) {
      _tile_stored(2, cbuf[2], 64);
      _tile_stored(3, cbuf[3], 64);
    }
  }
}

// Weight rows n0..n0+15 against all x rows (MT x tiles), all of K.
template <QFormat FMT, int MT>
void tile_rows(const QWeight& w, const int8_t* xq, const float* xd, int64_t M, int64_t KB, int64_t n0,
               const float* bias, float* y, Panel& pn) {
  constexpr int GB = 4 / MT;  // blocks a group
  __m512 acc[MT][kRows];
  for (int t = 0; t < MT; ++t)
    for (int i = 0; i < kRows; ++i) acc[t][i] = _mm512_setzero_ps();
  alignas(64) int32_t cbuf[4][256];
  for (int64_t s0 = 0; s0 < KB; s0 += kSlab) {
    const int64_t ns = std::min<int64_t>(kSlab, KB - s0);
    decode_slab<FMT>(w, n0, s0, ns, pn);
    for (int64_t p0 = 0; p0 < ns; p0 += GB) {
      const int64_t b0 = s0 + p0;
      const int nj = static_cast<int>(std::min<int64_t>(GB, ns - p0));
      group_dots<MT>(pn, p0, b0, nj, xq, KB, cbuf);
      for (int j = 0; j < nj; ++j)
        for (int t = 0; t < MT; ++t) {
          const int32_t* cb = cbuf[j * MT + t];
          const __m512 sx = _mm512_loadu_ps(xd + (t * KB + b0 + j) * kRows);
#pragma GCC unroll 16
          for (int i = 0; i < kRows; ++i) {
            const __m512 s = FMT == QFormat::Int8 ? sx : _mm512_mul_ps(_mm512_set1_ps(pn.sw[i * kSlab + p0 + j]), sx);
            acc[t][i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_load_si512(cb + 16 * i)), s, acc[t][i]);
          }
        }
    }
  }
  for (int t = 0; t < MT; ++t) tile_store_avx512::store(acc[t], w, n0, t * kRows, M, bias, y);
}

// Four block pairs of the panel (blocks p0 .. p0 + 7) against their x tiles, in C tiles 0-3.
inline void group_pairs(const Panel& pn, int64_t p0, int64_t b0, int nq, const int8_t* xq, int32_t (*cbuf)[256]) {
  four_slots(pn.codes + kBlock * p0, 2 * kBlock, xq + (b0 >> 1) * kPairTile, kPairTile, nq, cbuf);
}
#undef MPT_SLOT

// Weight rows n0..n0+15 against at most 8 x rows, two blocks a product (pack_x_pairs): the even blocks
// sum in lanes 0-7 of the accumulators and the odd ones in lanes 8-15, added at the end.
template <QFormat FMT>
void tile_rows_pairs(const QWeight& w, const int8_t* xq, const float* xd, int64_t M, int64_t KB, int64_t n0,
                     const float* bias, float* y, Panel& pn) {
  __m512 acc[kRows];
  for (int i = 0; i < kRows; ++i) acc[i] = _mm512_setzero_ps();
  alignas(64) int32_t cbuf[4][256];
  const __m512i halves = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
  for (int64_t s0 = 0; s0 < KB; s0 += kSlab) {
    const int64_t ns = std::min<int64_t>(kSlab, KB - s0);
    decode_slab<FMT>(w, n0, s0, ns, pn);  // whole chunks: the scale of an absent odd block is 0
    for (int64_t p0 = 0; p0 < ns; p0 += 8) {
      const int nq = static_cast<int>(std::min<int64_t>(4, (ns - p0 + 1) / 2));
      group_pairs(pn, p0, s0 + p0, nq, xq, cbuf);
      for (int q = 0; q < nq; ++q) {
        const __m512 sx = _mm512_loadu_ps(xd + ((s0 + p0) / 2 + q) * kRows);
#pragma GCC unroll 16
        for (int i = 0; i < kRows; ++i) {
          __m512 s = sx;
          if constexpr (FMT != QFormat::Int8) {  // [sw of block 2q x 8, sw of block 2q + 1 x 8] * sx
            const __m128 two = _mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(pn.sw + i * kSlab + p0 + 2 * q)));
            s = _mm512_mul_ps(_mm512_permutexvar_ps(halves, _mm512_castps128_ps512(two)), sx);
          }
          acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_load_si512(cbuf[q] + 16 * i)), s, acc[i]);
        }
      }
    }
  }
  for (int i = 0; i < kRows; ++i)
    acc[i] = _mm512_castps256_ps512(_mm256_add_ps(_mm512_castps512_ps256(acc[i]), _mm512_extractf32x8_ps(acc[i], 1)));
  tile_store_avx512::store(acc, w, n0, 0, M, bias, y);
}

// MT: x tiles of 16 rows (1, 2), or 0: at most 8 rows, two blocks a product.
template <QFormat FMT, int MT>
void run(const QWeight& w, const int8_t* xq, const float* xd, int64_t M, int64_t KB, const float* bias, float* y) {
  const int64_t NT = (w.N + kRows - 1) / kRows;
  // tiles handed out from a shared counter in runs of `per`, so a preempted thread holds nobody up
  const int64_t per = std::max<int64_t>(1, NT / (int64_t(num_threads()) * 8)), runs = (NT + per - 1) / per;
  std::atomic<int64_t> next{0};
  parallel_for(std::min<int64_t>(num_threads(), runs), 1, [&](int64_t, int64_t) {
    static thread_local Panel pn;
    configure(MT == 0);
    for (int64_t r; (r = next.fetch_add(1, std::memory_order_relaxed)) < runs;)
      for (int64_t nt = r * per; nt < std::min(NT, (r + 1) * per); ++nt) {
        if constexpr (MT == 0)
          tile_rows_pairs<FMT>(w, xq, xd, M, KB, nt * kRows, bias, y, pn);
        else
          tile_rows<FMT, MT>(w, xq, xd, M, KB, nt * kRows, bias, y, pn);
      }
    _tile_release();
  });
}

}  // namespace

void qmatmul_q8_amx(const QWeight& w, const float* x, int64_t M, const float* bias, float* y) {
  if (M < 1 || M > kAmxQ8MaxRows) throw std::invalid_argument("qmatmul_q8_amx: 1 to " + std::to_string(kAmxQ8MaxRows) + " x rows");
  if (w.fmt == QFormat::Nf4 && !nf4_q8_ok(w.K, w.blocksize))
    throw std::invalid_argument("nf4 q8 path: needs a power-of-two blocksize >= 32 that divides K");
  const int64_t KB = (w.K + kBlock - 1) / kBlock, MT = (M + kRows - 1) / kRows;
  static thread_local std::vector<int8_t> xbuf;
  static thread_local std::vector<float> dbuf;
  if (xbuf.size() < static_cast<size_t>(2 * KB * kXTile)) xbuf.resize(static_cast<size_t>(2 * KB * kXTile));
  if (dbuf.size() < static_cast<size_t>(2 * KB * kRows)) dbuf.resize(static_cast<size_t>(2 * KB * kRows));
  const int8_t* xq = xbuf.data();
  const float* xd = dbuf.data();
  if (M <= kAmxQ8PairRows) {
    pack_x_pairs(x, M, w.K, KB, xbuf.data(), dbuf.data());
    switch (w.fmt) {
      case QFormat::Int8: return run<QFormat::Int8, 0>(w, xq, xd, M, KB, bias, y);
      case QFormat::Int4: return run<QFormat::Int4, 0>(w, xq, xd, M, KB, bias, y);
      case QFormat::Nf4: return run<QFormat::Nf4, 0>(w, xq, xd, M, KB, bias, y);
    }
  }
  pack_x(x, M, w.K, KB, xbuf.data(), dbuf.data());
  switch (w.fmt) {
    case QFormat::Int8:
      return MT == 1 ? run<QFormat::Int8, 1>(w, xq, xd, M, KB, bias, y) : run<QFormat::Int8, 2>(w, xq, xd, M, KB, bias, y);
    case QFormat::Int4:
      return MT == 1 ? run<QFormat::Int4, 1>(w, xq, xd, M, KB, bias, y) : run<QFormat::Int4, 2>(w, xq, xd, M, KB, bias, y);
    case QFormat::Nf4:
      return MT == 1 ? run<QFormat::Nf4, 1>(w, xq, xd, M, KB, bias, y) : run<QFormat::Nf4, 2>(w, xq, xd, M, KB, bias, y);
  }
}

}  // namespace mpt
