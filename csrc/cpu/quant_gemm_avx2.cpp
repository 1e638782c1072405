// Integer GEMM tiles on AVX2: many x rows against int8 / int4 / nf4 weights with pmaddubsw. Blocking as in
// quant_gemm.h; a step is 8 blocks of 32 k (256 k), vector v (0..7) holding in int32 lane p the 4 bytes
// of block p at k offsets 4v..4v+3, for x and weights alike (a dword transpose of 8 blocks, by gathers
// from the codes of the step, once per x row and once per weight row and x block).
// Products, exact in int16 (pmaddubsw sums a pair: unsigned weight byte x signed x code):
//   int4: the nibbles 0..15 (pairs <= 2*15*127, so the 8 vectors of a step add up in int16 to <= 30480),
//         the lane then starts at -8 times the sum of its block's x codes;
//   int8: the code's magnitude, its sign moved onto x (pairs <= 2*127*127), widened to int32 per vector;
//   nf4: as int8, its codes kNf4Int8[q] looked up by a byte shuffle.
// Per (weight row, x row, step) the 8 int32 block sums are converted and multiply-added with the block
// scales (x's d, times int4's group scale or nf4's absmax * (1/127)) into an 8-lane float chain, steps
// in order, summed across lanes at the end.
#include <immintrin.h>

#include <algorithm>
#include <stdexcept>
#include <utility>
#include <vector>

#include "cpu/quant_gemm.h"
#include "cpu/quant_gemm_driver.h"
#include "cpu/thread_pool.h"

namespace mpt {
namespace {

constexpr int kStep = 256;  // k per step

template <QFormat FMT>
struct Tiles {  // register tile: weight rows x x rows (int8 / nf4 keep magnitudes and signs of their rows live)
  static constexpr int NR = FMT == QFormat::Int4 ? 4 : 2, MR = FMT == QFormat::Int4 ? 2 : 3;
};

// int4 group scales of one weight row: 8 consecutive ones, 0 past G. The one place these kernels read
// int4 scales (so their storage type changes here alone).
inline __m256 int4_scales8(const uint16_t* s, int64_t count) {  // IEEE half scales -> float (F16C)
  if (count >= 8) return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s)));
  alignas(16) uint16_t t[8] = {};
  for (int64_t i = 0; i < count; ++i) t[i] = s[i];
  return _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(t)));
}

inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// out[v][p] (dword) = codes[p][v]: 8 blocks of 32 bytes into the step layout.
inline void transpose_step(const int8_t* codes, int8_t* out) {
  const __m256i rows = _mm256_setr_epi32(0, 8, 16, 24, 32, 40, 48, 56);
  for (int v = 0; v < 8; ++v)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 32 * v),
                        _mm256_i32gather_epi32(reinterpret_cast<const int*>(codes), _mm256_add_epi32(rows, _mm256_set1_epi32(v)), 4));
}

// Q8Rows' arithmetic (d = amax / 127, q = round-half-even(x / d) clamped to +-127, NaN -> 0), vectorised.
template <QFormat FMT>
void pack_x(const float* x, int64_t M, int64_t K, GemmX& out) {
  const int64_t KB = (K + 31) / 32, S = (KB + 7) / 8;
  out.S = S;
  out.q.resize(static_cast<size_t>(M * S * kStep));
  out.init.resize(static_cast<size_t>(M * S * 8));
  out.d.resize(static_cast<size_t>(M * S * 8));
  parallel_for(M, 1, [&](int64_t m0, int64_t m1) {
    alignas(32) int8_t codes[8 * 32];
    alignas(32) float tmp[32];
    const __m256 absm = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    const __m256 lim = _mm256_set1_ps(127.f), nlim = _mm256_set1_ps(-127.f);
    const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (int64_t m = m0; m < m1; ++m)
      for (int64_t st = 0; st < S; ++st) {
        const int64_t o = m * S + st;
        for (int b = 0; b < 8; ++b) {
          const int64_t k0 = (st * 8 + b) * 32, n = std::max<int64_t>(0, std::min<int64_t>(32, K - k0));
          const float* src = x + m * K + k0;
          if (n < 32) {
            std::fill(tmp, tmp + 32, 0.f);
            std::copy(src, src + n, tmp);
            src = tmp;
          }
          __m256 v[4], amax = _mm256_setzero_ps();
          for (int i = 0; i < 4; ++i) {
            v[i] = _mm256_loadu_ps(src + 8 * i);  // |x| with NaN as 0, like std::fmax in quantize_q8
            amax = _mm256_max_ps(amax, _mm256_and_ps(_mm256_and_ps(v[i], absm), _mm256_cmp_ps(v[i], v[i], _CMP_ORD_Q)));
          }
          __m128 h = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
          h = _mm_max_ps(h, _mm_movehl_ps(h, h));
          h = _mm_max_ss(h, _mm_movehdup_ps(h));
          const float d = _mm_cvtss_f32(h) / 127.0f;
          __m256i qi[4], sum = _mm256_setzero_si256();
          for (int i = 0; i < 4; ++i) {
            __m256 r = _mm256_round_ps(_mm256_div_ps(v[i], _mm256_set1_ps(d)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            r = d > 0.f ? _mm256_and_ps(r, _mm256_cmp_ps(r, r, _CMP_ORD_Q)) : _mm256_setzero_ps();
            qi[i] = _mm256_cvtps_epi32(_mm256_min_ps(lim, _mm256_max_ps(nlim, r)));
            sum = _mm256_add_epi32(sum, qi[i]);
          }
          const __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(qi[0], qi[1]), _mm256_packs_epi32(qi[2], qi[3]));
          _mm256_store_si256(reinterpret_cast<__m256i*>(codes + 32 * b), _mm256_permutevar8x32_epi32(p, perm));
          __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
          s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, _MM_SHUFFLE(1, 0, 3, 2)));
          s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, _MM_SHUFFLE(2, 3, 0, 1)));
          out.init[o * 8 + b] = FMT == QFormat::Int4 ? -8 * _mm_cvtsi128_si32(s4) : 0;
          out.d[o * 8 + b] = d;
        }
        transpose_step(codes, out.q.data() + o * kStep);
      }
  });
}

// Weight rows [n0, n0 + nr), steps [s0, s0 + kc) -> wp [nr, kc, 256] in step layout (int4: nibbles;
// int8, nf4: signed codes, 0 past K) and, for int4 / nf4, the block scales wd [nr, kc, 8] (0 past K).
template <QFormat FMT>
void pack_w(const QWeight& w, int64_t n0, int64_t nr, int64_t s0, int64_t kc, int8_t* wp, float* wd) {
  const int64_t K = w.K, G = int4_groups(K), KB = (K + 31) / 32;
  const int shift = FMT == QFormat::Nf4 ? __builtin_ctzll(w.blocksize) : 0;  // nf4_q8_ok: a power of two
  const __m128i lo4 = _mm_set1_epi8(15), table = _mm_loadu_si128(reinterpret_cast<const __m128i*>(kNf4Int8));
  alignas(32) int8_t codes[8 * 32];
  alignas(32) float sc[8];
  for (int64_t r = 0; r < nr; ++r) {
    const int64_t n = n0 + r;
    for (int64_t s = 0; s < kc; ++s) {
      const int64_t st = s0 + s;
      for (int b = 0; b < 8; ++b) {
        const int64_t g = st * 8 + b;
        int8_t* c = codes + 32 * b;
        if (FMT == QFormat::Nf4) {  // 16 bytes a block, even k in the high nibbles (K % 32 == 0)
          __m128i lo = _mm_setzero_si128(), hi = _mm_setzero_si128();
          sc[b] = 0.f;
          if (g < KB) {
            const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w.data + n * K / 2 + g * 16));
            const __m128i ev = _mm_shuffle_epi8(table, _mm_and_si128(_mm_srli_epi16(raw, 4), lo4));
            const __m128i od = _mm_shuffle_epi8(table, _mm_and_si128(raw, lo4));
            lo = _mm_unpacklo_epi8(ev, od), hi = _mm_unpackhi_epi8(ev, od);
            sc[b] = w.scale[(n * K + g * 32) >> shift] * (1.0f / 127.0f);
          }
          _mm_store_si128(reinterpret_cast<__m128i*>(c), lo);
          _mm_store_si128(reinterpret_cast<__m128i*>(c + 16), hi);
        } else if (FMT == QFormat::Int4) {
          __m128i lo = _mm_setzero_si128(), hi = _mm_setzero_si128();
          if (g < G) {
            const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w.data + (n * G + g) * 16));
            lo = _mm_and_si128(raw, lo4), hi = _mm_and_si128(_mm_srli_epi16(raw, 4), lo4);
          }
          _mm_store_si128(reinterpret_cast<__m128i*>(c), lo);
          _mm_store_si128(reinterpret_cast<__m128i*>(c + 16), hi);
        } else {
          const int64_t k0 = g * 32, cnt = std::max<int64_t>(0, std::min<int64_t>(32, K - k0));
          const int8_t* src = reinterpret_cast<const int8_t*>(w.data) + n * K + k0;
          if (cnt == 32) {
            _mm256_store_si256(reinterpret_cast<__m256i*>(c), _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src)));
          } else {
            std::fill(c, c + 32, int8_t(0));
            std::copy(src, src + cnt, c);
          }
        }
      }
      transpose_step(codes, wp + (r * kc + s) * kStep);
      if (FMT == QFormat::Int4) _mm256_storeu_ps(wd + (r * kc + s) * 8, int4_scales8(w.scale16 + n * G + st * 8, G - st * 8));
      if (FMT == QFormat::Nf4) _mm256_storeu_ps(wd + (r * kc + s) * 8, _mm256_load_ps(sc));
    }
  }
}

using Tile = GemmTile<int8_t>;

template <QFormat FMT, int R, int MB>
void micro(const Tile& t) {
  constexpr bool I4 = FMT == QFormat::Int4, WD = FMT != QFormat::Int8;  // WD: weight block scales
  const __m256i ones = _mm256_set1_epi16(1);
  for (int64_t s = 0; s < t.kc; ++s) {
    __m256i ia[R][MB];
    for (int r = 0; r < R; ++r)
      for (int m = 0; m < MB; ++m) ia[r][m] = _mm256_setzero_si256();
    for (int v = 0; v < 8; ++v) {
      __m256i wv[R], aw[R];
      for (int r = 0; r < R; ++r) {
        wv[r] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(t.wp + (r * t.kc + s) * kStep + 32 * v));
        if (!I4) aw[r] = _mm256_abs_epi8(wv[r]);
      }
      for (int m = 0; m < MB; ++m) {
        const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(t.xq + m * t.S * kStep + s * kStep + 32 * v));
        for (int r = 0; r < R; ++r) {
          if (I4)
            ia[r][m] = _mm256_add_epi16(ia[r][m], _mm256_maddubs_epi16(wv[r], xv));
          else
            ia[r][m] = _mm256_add_epi32(ia[r][m], _mm256_madd_epi16(_mm256_maddubs_epi16(aw[r], _mm256_sign_epi8(xv, wv[r])), ones));
        }
      }
    }
    for (int m = 0; m < MB; ++m) {
      const __m256 d = _mm256_loadu_ps(t.xd + m * t.S * 8 + s * 8);
      const __m256i init = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(t.xi + m * t.S * 8 + s * 8));
      for (int r = 0; r < R; ++r) {
        const __m256i i = I4 ? _mm256_add_epi32(_mm256_madd_epi16(ia[r][m], ones), init) : ia[r][m];
        const __m256 sc = WD ? _mm256_mul_ps(_mm256_loadu_ps(t.wd + (r * t.kc + s) * 8), d) : d;
        float* c = t.C + (r * t.ldc + m) * 8;
        _mm256_storeu_ps(c, _mm256_fmadd_ps(_mm256_cvtepi32_ps(i), sc, _mm256_loadu_ps(c)));
      }
    }
  }
}

struct Avx2 {  // the ISA class of quant_gemm_driver.h
  using WByte = int8_t;
  static constexpr int64_t kStep = mpt::kStep, kLanes = 8;
  template <QFormat FMT> using Shape = Tiles<FMT>;
  template <QFormat FMT> static constexpr auto pack_x = &mpt::pack_x<FMT>;
  template <QFormat FMT> static constexpr auto pack_w = &mpt::pack_w<FMT>;
  template <QFormat FMT, int R, int MB> static constexpr auto tile = &micro<FMT, R, MB>;
  static float hsum(const float* c) { return hsum8(_mm256_loadu_ps(c)); }
};

}  // namespace

void qgemm_q8_avx2(const QWeight& w, const float* x, int64_t M, const float* bias, float* y) {
  if (w.fmt == QFormat::Int8) return gemm_tiles<Avx2, QFormat::Int8>(w, x, M, bias, y);
  if (w.fmt == QFormat::Int4) return gemm_tiles<Avx2, QFormat::Int4>(w, x, M, bias, y);
  if (!nf4_q8_ok(w.K, w.blocksize)) throw std::invalid_argument("nf4 GEMM tiles: needs nf4_q8_ok(K, blocksize)");
  gemm_tiles<Avx2, QFormat::Nf4>(w, x, M, bias, y);
}

}  // namespace mpt
