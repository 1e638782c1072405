// Integer GEMM tiles on AVX2: many x rows against int8 weights with pmaddubsw (int4 / nf4 take the pair
// kernel at every row count on AVX2, quant_q8_pairs_avx2.cpp: on Zen 3 it ran 1.2x these tiles at 32 and
// 512 rows, docs/benchmarks.md). Blocking as in quant_gemm.h; a step is 8 blocks of 32 k (256 k), vector
// v (0..7) holding in int32 lane p the 4 bytes of block p at k offsets 4v..4v+3, for x and weights alike
// (a dword transpose of 8 blocks, by gathers from the codes of the step, once per x row and once per
// weight row and x block).
// Products, exact in int16: the weight code's magnitude (pmaddubsw's unsigned operand), its sign moved
// onto x (pairs <= 2*127*127), widened to int32 per vector. Per (weight row, x row, step) the 8 int32
// block sums are converted and multiply-added with x's block scales into an 8-lane float chain, steps
// in order, summed across lanes at the end.
#include <immintrin.h>

#include <algorithm>
#include <stdexcept>
#include <utility>
#include <vector>

#include "cpu/quant_gemm.h"
#include "cpu/quant_gemm_driver.h"
#include "cpu/thread_pool.h"
#include "cpu/vec_math_avx2.h"

namespace mpt {
namespace {

constexpr int kStep = 256;  // k per step

template <QFormat FMT>
struct Tiles {  // register tile: weight rows x x rows (the magnitudes and signs of the weight rows stay live)
  static constexpr int NR = 2, MR = 3;
};

using avx2_math::hsum8;

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
          __m256i qi[4];
          for (int i = 0; i < 4; ++i) {
            __m256 r = _mm256_round_ps(_mm256_div_ps(v[i], _mm256_set1_ps(d)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            r = d > 0.f ? _mm256_and_ps(r, _mm256_cmp_ps(r, r, _CMP_ORD_Q)) : _mm256_setzero_ps();
            qi[i] = _mm256_cvtps_epi32(_mm256_min_ps(lim, _mm256_max_ps(nlim, r)));
          }
          const __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(qi[0], qi[1]), _mm256_packs_epi32(qi[2], qi[3]));
          _mm256_store_si256(reinterpret_cast<__m256i*>(codes + 32 * b), _mm256_permutevar8x32_epi32(p, perm));
          out.init[o * 8 + b] = 0;  // no offset: int8 codes are signed
          out.d[o * 8 + b] = d;
        }
        transpose_step(codes, out.q.data() + o * kStep);
      }
  });
}

// Weight rows [n0, n0 + nr), steps [s0, s0 + kc) -> wp [nr, kc, 256] in step layout (signed codes, 0 past
// K). int8 only (wd unused: no weight block scales).
template <QFormat FMT>
void pack_w(const QWeight& w, int64_t n0, int64_t nr, int64_t s0, int64_t kc, int8_t* wp, float* /*wd*/) {
  static_assert(FMT == QFormat::Int8, "AVX2 GEMM tiles: int8 weights only");
  const int64_t K = w.K;
  alignas(32) int8_t codes[8 * 32];
  for (int64_t r = 0; r < nr; ++r) {
    const int64_t n = n0 + r;
    for (int64_t s = 0; s < kc; ++s) {
      for (int b = 0; b < 8; ++b) {
        int8_t* c = codes + 32 * b;
        const int64_t k0 = ((s0 + s) * 8 + b) * 32, cnt = std::max<int64_t>(0, std::min<int64_t>(32, K - k0));
        const int8_t* src = reinterpret_cast<const int8_t*>(w.data) + n * K + k0;
        if (cnt == 32) {
          _mm256_store_si256(reinterpret_cast<__m256i*>(c), _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src)));
        } else {
          std::fill(c, c + 32, int8_t(0));
          std::copy(src, src + cnt, c);
        }
      }
      transpose_step(codes, wp + (r * kc + s) * kStep);
    }
  }
}

using Tile = GemmTile<int8_t>;

template <QFormat FMT, int R, int MB>
void micro(const Tile& t) {
  static_assert(FMT == QFormat::Int8, "AVX2 GEMM tiles: int8 weights only");
  const __m256i ones = _mm256_set1_epi16(1);
  for (int64_t s = 0; s < t.kc; ++s) {
    __m256i ia[R][MB];
    for (int r = 0; r < R; ++r)
      for (int m = 0; m < MB; ++m) ia[r][m] = _mm256_setzero_si256();
    for (int v = 0; v < 8; ++v) {
      __m256i wv[R], aw[R];
      for (int r = 0; r < R; ++r) {
        wv[r] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(t.wp + (r * t.kc + s) * kStep + 32 * v));
        aw[r] = _mm256_abs_epi8(wv[r]);
      }
      for (int m = 0; m < MB; ++m) {
        const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(t.xq + m * t.S * kStep + s * kStep + 32 * v));
        for (int r = 0; r < R; ++r)
          ia[r][m] = _mm256_add_epi32(ia[r][m], _mm256_madd_epi16(_mm256_maddubs_epi16(aw[r], _mm256_sign_epi8(xv, wv[r])), ones));
      }
    }
    for (int m = 0; m < MB; ++m) {
      const __m256 d = _mm256_loadu_ps(t.xd + m * t.S * 8 + s * 8);
      for (int r = 0; r < R; ++r) {
        float* c = t.C + (r * t.ldc + m) * 8;
        _mm256_storeu_ps(c, _mm256_fmadd_ps(_mm256_cvtepi32_ps(ia[r][m]), d, _mm256_loadu_ps(c)));
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
  if (w.fmt != QFormat::Int8) throw std::invalid_argument("AVX2 GEMM tiles: int8 weights only (int4 / nf4: the pair kernel)");
  gemm_tiles<Avx2, QFormat::Int8>(w, x, M, bias, y);
}

}  // namespace mpt
