// The blocked driver of the integer GEMM tiles, one template over an ISA's kernels (quant_gemm.h has
// the design and block sizes). Include only from an ISA's file (quant_gemm_avx512.cpp): all of it lives in
// an anonymous namespace, so each ISA's copy is compiled with that file's flags alone.
//
// An ISA class I provides, for every QFormat F it takes:
//   using WByte;                       the packed weight byte (unsigned for VNNI)
//   kStep, kLanes                      k per step; float lanes (= blocks of 32 k) per step
//   Shape<F>::NR, Shape<F>::MR         the register tile: weight rows x x rows
//   pack_x<F>(x, M, K, GemmX&)         x quantized to q8 blocks in the step layout
//   pack_w<F>(w, n0, nr, s0, kc, WByte* wp, float* wd)   weight rows in the step layout (+ block scales)
//   tile<F, R, MB>                     the R x MB tile kernel (1 <= R <= NR, 1 <= MB <= MR), a
//                                      void (*)(const GemmTile<WByte>&)
//   hsum(const float* chain)           the sum of one float chain of kLanes lanes
#pragma once
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <utility>
#include <vector>

#include "cpu/quant_gemm.h"
#include "cpu/thread_pool.h"

namespace mpt {
namespace {

// x packed for the tiles: per row and step, kStep codes in the step layout, kLanes lane start values
// (minus the weight offset times the sum of the block's codes) and kLanes block scales.
struct GemmX {
  int64_t S = 0;              // steps
  std::vector<int8_t> q;      // [M, S, kStep]
  std::vector<int32_t> init;  // [M, S, kLanes]
  std::vector<float> d;       // [M, S, kLanes]
};

template <class WByte>
struct GemmTile {
  const WByte* wp;    // R weight rows, row stride kc * kStep
  const float* wd;    // int4 / nf4: their block scales, row stride kc * kLanes
  const int8_t* xq;   // MB x rows at the pass's first step, row stride S * kStep
  const int32_t* xi;  // row stride S * kLanes
  const float* xd;
  int64_t kc, S;
  float* C;  // float chains [R][ldc = mc][kLanes], continued across passes
  int64_t ldc;
};

template <class I, QFormat FMT, int MR, int... J>
void tile_any(std::integer_sequence<int, J...>, int r, int mb, const GemmTile<typename I::WByte>& t) {
  using Fn = void (*)(const GemmTile<typename I::WByte>&);
  static constexpr Fn table[] = {I::template tile<FMT, J / MR + 1, J % MR + 1>...};
  table[(r - 1) * MR + (mb - 1)](t);
}

template <class I, QFormat FMT>
void gemm_tiles(const QWeight& w, const float* x, int64_t M, const float* bias, float* y) {
  constexpr bool WD = FMT != QFormat::Int8;  // weight block scales
  constexpr int NR = I::template Shape<FMT>::NR, MR = I::template Shape<FMT>::MR;
  constexpr int64_t ST = I::kStep, L = I::kLanes, per512 = 512 / ST;
  GemmX xp;
  I::template pack_x<FMT>(x, M, w.K, xp);
  const int64_t N = w.N, S = xp.S;
  // gemm_blocking counts steps of 512 k; a shorter step: more of them, fewer bytes each.
  const GemmBlocking b = gemm_blocking(gemm_cache_sizes(), M, N, (S + per512 - 1) / per512, NR, MR, num_threads());
  const GemmBlocking bl{std::min<int64_t>(S, per512 * b.kc), b.mc, b.nc};
  const int64_t nM = (M + bl.mc - 1) / bl.mc, blocks = ((N + bl.nc - 1) / bl.nc) * nM;
  std::atomic<int64_t> next{0};
  // Blocks (weight rows x x rows) handed out from a shared counter, weight-row major; each output is
  // computed whole by one thread in a fixed order, so results depend on neither threads nor blocks.
  parallel_for(std::min<int64_t>(num_threads(), blocks), 1, [&](int64_t, int64_t) {
    std::vector<typename I::WByte> wp(static_cast<size_t>(bl.nc * bl.kc * ST));
    std::vector<float> wd(WD ? static_cast<size_t>(bl.nc * bl.kc * L) : 0);
    std::vector<float> C(static_cast<size_t>(bl.nc * bl.mc * L));
    for (int64_t blk; (blk = next.fetch_add(1, std::memory_order_relaxed)) < blocks;) {
      const int64_t n0 = (blk / nM) * bl.nc, nr = std::min(bl.nc, N - n0);
      const int64_t m0 = (blk % nM) * bl.mc, mr = std::min(bl.mc, M - m0);
      std::fill(C.begin(), C.end(), 0.f);
      for (int64_t s0 = 0; s0 < S; s0 += bl.kc) {
        const int64_t kc = std::min(bl.kc, S - s0);
        I::template pack_w<FMT>(w, n0, nr, s0, kc, wp.data(), wd.data());
        for (int64_t r0 = 0; r0 < nr; r0 += NR)
          for (int64_t i0 = 0; i0 < mr; i0 += MR) {
            const int64_t m = m0 + i0;
            const GemmTile<typename I::WByte> t{wp.data() + r0 * kc * ST, WD ? wd.data() + r0 * kc * L : nullptr,
                                                xp.q.data() + (m * S + s0) * ST, xp.init.data() + (m * S + s0) * L,
                                                xp.d.data() + (m * S + s0) * L, kc, S, C.data() + (r0 * bl.mc + i0) * L,
                                                bl.mc};
            tile_any<I, FMT, MR>(std::make_integer_sequence<int, NR * MR>{}, static_cast<int>(std::min<int64_t>(NR, nr - r0)),
                                 static_cast<int>(std::min<int64_t>(MR, mr - i0)), t);
          }
      }
      for (int64_t i = 0; i < mr; ++i)
        for (int64_t r = 0; r < nr; ++r) {
          const int64_t n = n0 + r;
          const float rf = row_factor(w, n), bn = bias ? bias[n] : 0.f;
          y[(m0 + i) * N + n] = I::hsum(C.data() + (r * bl.mc + i) * L) * rf + bn;
        }
    }
  });
}

}  // namespace
}  // namespace mpt
