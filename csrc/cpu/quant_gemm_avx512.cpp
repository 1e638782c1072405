// Integer GEMM tiles on AVX-512 VNNI: many x rows against int8 / int4 / nf4 weights. Design and block
// sizes: quant_gemm.h. Layout of a step (16 blocks of 32 k) for x and weights, as in q8_wide
// (quant_matmul_avx512.cpp), so both kernels give bit-identical rows:
//   vector v (0..7) holds in int32 lane p the 4 bytes of block step_block(p) (q8_lanes_avx512.h) at
//   k offsets 4v..4v+3;
//   weights as unsigned bytes (int8: code ^ 0x80 = code + 128; int4: the nibble 0..15; nf4:
//   kNf4Int8[q] + 128 by a byte shuffle), x as codes, and each x lane starts at -8 (int4) or -128
//   (int8, nf4) times the sum of its block's 32 codes. int4 and nf4 also carry a float scale per
//   weight block and lane (int4: its half group scale; nf4: absmax * (1/kNf4IntMax) of the block's nf4 block).
#include <immintrin.h>

#include <algorithm>
#include <stdexcept>
#include <utility>
#include <vector>

#include "cpu/q8_lanes_avx512.h"
#include "cpu/quant_gemm.h"
#include "cpu/quant_gemm_driver.h"
#include "cpu/thread_pool.h"

namespace mpt {
namespace {

using avx512_lanes::bytes_mask;
using avx512_lanes::transpose4;

constexpr int NR = 4, MR = 3;  // register tile: weight rows x x rows (12 int32 + 12 float accumulators)
constexpr int kStep = 512;     // k per step

using avx512_lanes::step_block_index;  // the block of each int32 lane of a step

// int4 group scales of one weight row: 16 consecutive ones as a vector, masked past G. The one place
// the kernels read int4 scales (so their storage type changes here alone).
inline __m512 int4_scales16(const uint16_t* s, int64_t count) {  // IEEE half scales -> float
  const __m256i h = count >= 16 ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s))
                                : _mm256_maskz_loadu_epi16(static_cast<__mmask16>((1u << count) - 1), s);
  return _mm512_cvtph_ps(h);
}

// Quantizes x row by row (Q8Rows' arithmetic: d = amax / 127, q = round-half-even(x / d) clamped
// to +-127, 0 for NaN) and writes the step layout directly.
template <QFormat FMT>
void pack_x(const float* x, int64_t M, int64_t K, GemmX& out) {
  const int64_t KB = (K + 31) / 32, S = (KB + 15) / 16;
  const int32_t off = FMT == QFormat::Int4 ? 8 : 128;
  out.S = S;
  out.q.resize(static_cast<size_t>(M * S * kStep));
  out.init.resize(static_cast<size_t>(M * S * 16));
  out.d.resize(static_cast<size_t>(M * S * 16));
  parallel_for(M, 1, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m)
      for (int64_t st = 0; st < S; ++st) {
        const int64_t o = m * S + st;
        avx512_lanes::pack_x_step<FMT>(x + m * K, K, st, off, false, out.q.data() + o * kStep,
                                       out.init.data() + o * 16, out.d.data() + o * 16);
      }
  });
}

// nf4: the block scales absmax * (1/kNf4IntMax) of row n's q8 blocks st * 16 + step_block(p) in lane p (0 past
// K). K % blocksize == 0 (nf4_q8_ok), so row n's nf4 blocks start at absmax + n * (K >> shift).
inline __m512 nf4_scales16(const QWeight& w, int64_t n, int64_t st, int shift) {
  const __m512i blk = _mm512_add_epi32(step_block_index<QFormat::Nf4>(), _mm512_set1_epi32(static_cast<int>(st * 16)));
  const __mmask16 valid = _mm512_cmplt_epi32_mask(blk, _mm512_set1_epi32(static_cast<int>(w.K / 32)));
  const __m512i idx = _mm512_srli_epi32(_mm512_slli_epi32(blk, 5), shift);
  const __m512 a = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), valid, idx, w.scale + n * (w.K >> shift), 4);
  return _mm512_mul_ps(a, _mm512_set1_ps(kNf4IntScale));
}

// Packs weight rows [n0, n0 + nr) for steps [s0, s0 + kc) into wp ([nr, kc, 512] unsigned bytes in
// step layout) and, for int4 / nf4, their block scales in lane order into wd ([nr, kc, 16]).
template <QFormat FMT>
void pack_w(const QWeight& w, int64_t n0, int64_t nr, int64_t s0, int64_t kc, uint8_t* wp, float* wd) {
  constexpr bool I4 = FMT == QFormat::Int4, NF = FMT == QFormat::Nf4;
  constexpr int NL = I4 || NF ? 4 : 8;  // 64-byte loads a step
  const int64_t K = w.K, G = int4_groups(K), rowbytes = I4 ? G * 16 : NF ? K / 2 : K;
  const int shift = NF ? __builtin_ctzll(w.blocksize) : 0;  // nf4_q8_ok: a power of two
  const __m512i lo4 = _mm512_set1_epi8(15), x80 = _mm512_set1_epi8(static_cast<char>(0x80));
  const __m512i sidx = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  for (int64_t r = 0; r < nr; ++r) {
    const uint8_t* row = w.data + (n0 + r) * rowbytes;
    for (int64_t s = 0; s < kc; ++s) {
      const int64_t st = s0 + s, left = rowbytes - st * 64 * NL;
      __m512i z[NL], wv[8];
      for (int a = 0; a < NL; ++a) z[a] = _mm512_maskz_loadu_epi8(bytes_mask(left - 64 * a), row + st * 64 * NL + 64 * a);
      if (NF) {  // load a, 128-bit lane c: block 4a + c; the transposes put it in lane p = 4c + a
        __m512i lo[4], hi[4];
        for (int a = 0; a < 4; ++a) avx512_lanes::nf4_bytes(z[a], lo[a], hi[a]);
        transpose4(lo, wv);
        transpose4(hi, wv + 4);
        _mm512_storeu_ps(wd + (r * kc + s) * 16, nf4_scales16(w, n0 + r, st, shift));
      } else if (I4) {
        __m512i t[4];
        transpose4(z, t);
        for (int j = 0; j < 4; ++j) {
          wv[j] = _mm512_and_si512(t[j], lo4);
          wv[4 + j] = _mm512_and_si512(_mm512_srli_epi16(t[j], 4), lo4);
        }
        const __m512 sc = int4_scales16(w.scale16 + (n0 + r) * G + st * 16, G - st * 16);
        _mm512_storeu_ps(wd + (r * kc + s) * 16, _mm512_permutexvar_ps(sidx, sc));
      } else {
        __m512i t0[4], t1[4];
        transpose4(z, t0);
        transpose4(z + 4, t1);
        for (int j = 0; j < 4; ++j) {  // absent bytes: 0 ^ 0x80 = 128 against x codes 0
          wv[j] = _mm512_xor_si512(_mm512_shuffle_i64x2(t0[j], t1[j], _MM_SHUFFLE(2, 0, 2, 0)), x80);
          wv[4 + j] = _mm512_xor_si512(_mm512_shuffle_i64x2(t0[j], t1[j], _MM_SHUFFLE(3, 1, 3, 1)), x80);
        }
      }
      for (int v = 0; v < 8; ++v) _mm512_storeu_si512(wp + (r * kc + s) * kStep + 64 * v, wv[v]);
    }
  }
}

using Tile = GemmTile<uint8_t>;

// R weight rows x MB x rows over kc steps; continues the float chains held in C. Per step and x row,
// int4 / nf4 multiply each weight row's block scales by x's (one more float op per 8 dot products).
template <bool WD, int R, int MB>  // WD: weight block scales (int4, nf4)
void micro(const Tile& t) {
  __m512 acc[R][MB];
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < MB; ++m) acc[r][m] = _mm512_loadu_ps(t.C + (r * t.ldc + m) * 16);
  for (int64_t s = 0; s < t.kc; ++s) {
    __m512i ia[R][MB];
    for (int m = 0; m < MB; ++m) {
      const __m512i init = _mm512_loadu_si512(t.xi + m * t.S * 16 + s * 16);
      for (int r = 0; r < R; ++r) ia[r][m] = init;
    }
    for (int v = 0; v < 8; ++v) {
      __m512i wv[R];
      for (int r = 0; r < R; ++r) {
        wv[r] = _mm512_loadu_si512(t.wp + (r * t.kc + s) * kStep + 64 * v);
        asm("" : "+v"(wv[r]));  // held in a register: GCC would otherwise reload it for every x row
      }
      for (int m = 0; m < MB; ++m) {
        const __m512i xv = _mm512_loadu_si512(t.xq + m * t.S * kStep + s * kStep + 64 * v);
        for (int r = 0; r < R; ++r) ia[r][m] = _mm512_dpbusd_epi32(ia[r][m], wv[r], xv);
      }
    }
    for (int m = 0; m < MB; ++m) {
      const __m512 d = _mm512_loadu_ps(t.xd + m * t.S * 16 + s * 16);
      for (int r = 0; r < R; ++r) {
        const __m512 sc = WD ? _mm512_mul_ps(_mm512_loadu_ps(t.wd + (r * t.kc + s) * 16), d) : d;
        acc[r][m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ia[r][m]), sc, acc[r][m]);
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < MB; ++m) _mm512_storeu_ps(t.C + (r * t.ldc + m) * 16, acc[r][m]);
}

struct Avx512 {  // the ISA class of quant_gemm_driver.h
  using WByte = uint8_t;
  static constexpr int64_t kStep = mpt::kStep, kLanes = 16;
  template <QFormat FMT> struct Shape { static constexpr int NR = mpt::NR, MR = mpt::MR; };
  template <QFormat FMT> static constexpr auto pack_x = &mpt::pack_x<FMT>;
  template <QFormat FMT> static constexpr auto pack_w = &mpt::pack_w<FMT>;
  template <QFormat FMT, int R, int MB> static constexpr auto tile = &micro<FMT != QFormat::Int8, R, MB>;
  static float hsum(const float* c) { return _mm512_reduce_add_ps(_mm512_loadu_ps(c)); }
};

}  // namespace

void qgemm_q8_avx512(const QWeight& w, const float* x, int64_t M, const float* bias, float* y) {
  switch (w.fmt) {
    case QFormat::Int8: return gemm_tiles<Avx512, QFormat::Int8>(w, x, M, bias, y);
    case QFormat::Int4: return gemm_tiles<Avx512, QFormat::Int4>(w, x, M, bias, y);
    case QFormat::Nf4:
      if (!nf4_q8_ok(w.K, w.blocksize)) throw std::invalid_argument("nf4 GEMM tiles: needs nf4_q8_ok(K, blocksize)");
      return gemm_tiles<Avx512, QFormat::Nf4>(w, x, M, bias, y);
  }
  throw std::invalid_argument("the integer GEMM tiles: unknown weight format");
}

}  // namespace mpt
