// bf16 GEMM on AMX tiles for many x rows: y = x @ W^T (+ bias) with x and the dequantized weight
// both rounded to bfloat16 and products summed in float32 (ref_matmul_bf16_operands; int8: the codes
// are the operand, exact in bf16, and scb / 127 multiplies the sums, as on CUDA).
//
// The weight is tile A and x tile B, so the weight needs no transpose: a tile row is 32 consecutive
// k of one weight row, decoded straight into a panel of 32 weight rows x all of K (in L2), which every
// block of 32 x rows then reuses. x is packed once per call into B's pair layout (row kp of a tile:
// for each of 16 x rows, the bf16 pair k = 2kp, 2kp+1). A 2 x 2 block of float32 tiles (32 weight rows
// x 32 x rows) accumulates over all of K, then is stored, transposed into y, and scaled / biased.
// Tiles: 0-3 accumulators (weight half i, x half j at 2i + j), 4-5 weight, 6-7 x.
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "cpu/amx_tile_config.h"
#include "cpu/quant_formats.h"
#include "cpu/quant_gemm.h"
#include "cpu/thread_pool.h"
#include "cpu/tile_store_avx512.h"

namespace mpt {
namespace {

constexpr int64_t kChunk = 32;   // k per tile row (bf16)
constexpr int64_t kTile = 16;    // rows of a tile; x rows per x tile
constexpr int64_t kTileU16 = kTile * kChunk;  // one tile: 16 rows x 64 bytes

void configure_tiles() {
  TileConfig c;
  for (int t = 0; t < 8; ++t) c.colsb[t] = 64, c.rows[t] = kTile;
  load_tile_config(c);
}

template <class T>
T* grow(std::vector<T>& v, size_t n) {
  if (v.size() < n) v.resize(n);
  return v.data();
}

inline __m512i to_bf16(__m512 lo, __m512 hi) { return (__m512i)_mm512_cvtne2ps_pbh(hi, lo); }

// A chunk of 32 k that the fast paths cannot take (k past K, nf4 blocks that do not hold whole
// chunks): element by element. k >= K is zero.
void decode_chunk_scalar(const QWeight& w, int64_t n, int64_t c, uint16_t* dst) {
  alignas(64) float v[kChunk];
  for (int64_t j = 0; j < kChunk; ++j) v[j] = c * kChunk + j < w.K ? decode_scalar(w, n, c * kChunk + j) : 0.f;
  _mm512_storeu_si512(dst, to_bf16(_mm512_load_ps(v), _mm512_load_ps(v + 16)));
}

// 32 codes as word indices (in k order) looked up in a 16-entry bf16 table = bf16(value[q] * scale),
// so each weight is its float32 product rounded once to bf16, as ref_matmul_bf16_operands rounds it.
inline __m512i lookup(__m512i idx, __m512 values, float scale) {
  const __m512i t = _mm512_castsi256_si512((__m256i)_mm512_cvtneps_pbh(_mm512_mul_ps(values, _mm512_set1_ps(scale))));
  return _mm512_permutexvar_epi16(idx, t);
}

// Weight row n (all of K) into the panel: chunk c at dst + c * stride (uint16 units).
void decode_row(const QWeight& w, int64_t n, int64_t C, uint16_t* dst, int64_t stride) {
  if (n >= w.N) {
    for (int64_t c = 0; c < C; ++c) _mm512_storeu_si512(dst + c * stride, _mm512_setzero_si512());
    return;
  }
  const int64_t full = w.K / kChunk;  // chunks wholly inside K
  int64_t c = 0;
  if (w.fmt == QFormat::Int4) {  // one group a chunk: low nibbles are k 0-15, high ones k 16-31
    const int64_t G = int4_groups(w.K);
    const uint8_t* p = w.data + n * G * 16;
    const uint16_t* hs = w.scale16 + n * G;
    const __m512 values = _mm512_sub_ps(_mm512_set_ps(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                        _mm512_set1_ps(8.f));
    const __m128i m4 = _mm_set1_epi8(15);
    alignas(64) float sc[16];
    for (; c < full; ++c) {
      if ((c & 15) == 0) {  // 16 half scales at a time (F16C); a partial last batch reads only what exists
        const int64_t left = std::min<int64_t>(16, G - c);
        const __m256i h = _mm256_maskz_loadu_epi16(static_cast<__mmask16>((1u << left) - 1), hs + c);
        _mm512_store_ps(sc, _mm512_cvtph_ps(h));
      }
      const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + c * 16));
      const __m256i nib = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(b, 4), m4), _mm_and_si128(b, m4));
      _mm512_storeu_si512(dst + c * stride, lookup(_mm512_cvtepu8_epi16(nib), values, sc[c & 15]));
    }
  } else if (w.fmt == QFormat::Int8) {
    const int8_t* p = reinterpret_cast<const int8_t*>(w.data) + n * w.K;
    for (; c < full; ++c) {
      const __m512 lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + c * kChunk))));
      const __m512 hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + c * kChunk + 16))));
      _mm512_storeu_si512(dst + c * stride, to_bf16(lo, hi));
    }
  } else if (w.blocksize % kChunk == 0 && (n * w.K) % kChunk == 0) {
    // nf4, every chunk inside one block and starting on a byte: byte j holds elements 2j (high
    // nibble) and 2j + 1 (low nibble), i.e. word indices hi | lo << 16 per dword
    const __m512 values = _mm512_loadu_ps(kNf4Code);
    for (; c < full; ++c) {
      const int64_t f = n * w.K + c * kChunk;
      const __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w.data + (f >> 1))));
      const __m512i idx = _mm512_or_si512(_mm512_srli_epi32(b, 4), _mm512_slli_epi32(_mm512_and_si512(b, _mm512_set1_epi32(15)), 16));
      _mm512_storeu_si512(dst + c * stride, lookup(idx, values, w.scale[f / w.blocksize]));
    }
  }
  for (; c < C; ++c) decode_chunk_scalar(w, n, c, dst + c * stride);
}

// x [M, K] float32 -> tiles [M / 16][C][16 pairs][16 rows][2] bf16 (rows past M, k past K: zeros).
void pack_x(const float* x, int64_t M, int64_t K, int64_t C, uint16_t* xp) {
  const int64_t MT = (M + kTile - 1) / kTile;
  parallel_for(MT, 1, [&](int64_t t0, int64_t t1) {
    const __m512i idx = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                           _mm512_set1_epi32(kTile * 4));  // dword pair kp -> byte kp * 64
    for (int64_t t = t0; t < t1; ++t) {
      uint16_t* tiles = xp + t * C * kTileU16;
      std::memset(tiles, 0, static_cast<size_t>(C * kTileU16) * 2);
      for (int64_t r = 0; r < kTile && t * kTile + r < M; ++r) {
        const float* xr = x + (t * kTile + r) * K;
        for (int64_t c = 0; c < C; ++c) {
          const int64_t k0 = c * kChunk, left = K - k0;
          const __mmask16 m0 = left >= 16 ? 0xffff : static_cast<__mmask16>((1u << std::max<int64_t>(left, 0)) - 1);
          const __mmask16 m1 =
              left >= 32 ? 0xffff : static_cast<__mmask16>((1u << std::max<int64_t>(left - 16, 0)) - 1);
          const __m512i v = to_bf16(_mm512_maskz_loadu_ps(m0, xr + k0), _mm512_maskz_loadu_ps(m1, xr + k0 + 16));
          _mm512_i32scatter_epi32(tiles + c * kTileU16 + r * 2, idx, v, 1);
        }
      }
    }
  });
}

// The accumulators of weight rows n0.. (tiles 0-3) into y: transposed, times row_factor, plus bias.
void store_block(const QWeight& w, int64_t n0, int64_t m0, int64_t M, int xt, const float* bias, float* y) {
  alignas(64) float acc[kTile * kTile];
  for (int i = 0; i < 2; ++i) {
    const int64_t n = n0 + i * kTile;
    if (n >= w.N) break;
    for (int j = 0; j < xt; ++j) {
      switch (i * 2 + j) {
        case 0: _tile_stored(0, acc, 64); break;
        case 1: _tile_stored(1, acc, 64); break;
        case 2: _tile_stored(2, acc, 64); break;
        default: _tile_stored(3, acc, 64); break;
      }
      __m512 v[16];
      for (int r = 0; r < 16; ++r) v[r] = _mm512_load_ps(acc + r * kTile);  // weight row r, 16 x rows
      tile_store_avx512::store(v, w, n, m0 + j * kTile, M, bias, y);
    }
  }
}

}  // namespace

void qgemm_bf16_amx(const QWeight& w, const float* x, int64_t M, const float* bias, float* y) {
  const int64_t N = w.N, K = w.K, C = (K + kChunk - 1) / kChunk;
  const int64_t MT = (M + kTile - 1) / kTile, NB = (N + 2 * kTile - 1) / (2 * kTile);
  static thread_local std::vector<uint16_t> xbuf;
  uint16_t* xp = grow(xbuf, static_cast<size_t>(MT * C * kTileU16));
  pack_x(x, M, K, C, xp);
  parallel_for(NB, 1, [&](int64_t b0, int64_t b1) {
    static thread_local std::vector<uint16_t> pbuf;
    uint16_t* panel = grow(pbuf, static_cast<size_t>(C * 2 * kTileU16));  // [C][2 tiles][16 rows][32 k]
    configure_tiles();
    for (int64_t nb = b0; nb < b1; ++nb) {
      const int64_t n0 = nb * 2 * kTile;
      for (int64_t r = 0; r < 2 * kTile; ++r)
        decode_row(w, n0 + r, C, panel + (r / kTile) * kTileU16 + (r % kTile) * kChunk, 2 * kTileU16);
      for (int64_t mt = 0; mt < MT; mt += 2) {
        const int xt = MT - mt >= 2 ? 2 : 1;
        const uint16_t* x0 = xp + mt * C * kTileU16;
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
        if (xt == 2) {
          const uint16_t* x1 = x0 + C * kTileU16;
          for (int64_t c = 0; c < C; ++c) {
            _tile_loadd(4, panel + c * 2 * kTileU16, 64);
            _tile_loadd(5, panel + (c * 2 + 1) * kTileU16, 64);
            _tile_loadd(6, x0 + c * kTileU16, 64);
            _tile_loadd(7, x1 + c * kTileU16, 64);
            _tile_dpbf16ps(0, 4, 6);
            _tile_dpbf16ps(1, 4, 7);
            _tile_dpbf16ps(2, 5, 6);
            _tile_dpbf16ps(3, 5, 7);
          }
        } else {
          for (int64_t c = 0; c < C; ++c) {
            _tile_loadd(4, panel + c * 2 * kTileU16, 64);
            _tile_loadd(5, panel + (c * 2 + 1) * kTileU16, 64);
            _tile_loadd(6, x0 + c * kTileU16, 64);
            _tile_dpbf16ps(0, 4, 6);
            _tile_dpbf16ps(2, 5, 6);
          }
        }
        store_block(w, n0, mt * kTile, M, xt, bias, y);
      }
    }
    _tile_release();
  });
}

}  // namespace mpt
