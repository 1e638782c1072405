// Cache sizes and block sizes of the integer GEMM tiles (portable part; the kernels are per ISA).
#include "cpu/quant_gemm.h"

#include <algorithm>

#include "cpu/cache_sizes.h"

namespace mpt {

const CacheSizes& gemm_cache_sizes() {
  auto or_else = [](int64_t v, int64_t fallback) { return v > 0 ? v : fallback; };
  static const CacheSizes c{or_else(cpu_cache_bytes(1), 32 << 10), or_else(cpu_cache_bytes(2), 1 << 20),
                            or_else(cpu_cache_bytes(3), 8 << 20)};
  return c;
}

GemmBlocking gemm_blocking(const CacheSizes& c, int64_t M, int64_t N, int64_t S, int nr, int mr, int threads) {
  constexpr int64_t kStepW = 512, kStepX = 512 + 128, kStepWd = 64;  // bytes a step: codes, x init+scales, int4 scales
  const int64_t l1 = std::max<int64_t>(c.l1d, 16 << 10), l2 = std::max<int64_t>(c.l2, 256 << 10);
  GemmBlocking b{};
  // KC: balanced passes, each with a register tile's weight rows in half of L1d.
  const int64_t kc_max = std::max<int64_t>(1, l1 / 2 / (nr * kStepW)), passes = (S + kc_max - 1) / kc_max;
  b.kc = (S + passes - 1) / passes;
  // MC: the x block of a pass in half of L2; a multiple of the tile rows.
  b.mc = std::max<int64_t>(mr, l2 / 2 / (b.kc * kStepX) / mr * mr);
  b.mc = std::min(b.mc, (M + mr - 1) / mr * mr);
  // NC: accumulators and packed panel each in a quarter of L2; a multiple of the tile rows.
  const int64_t nc_acc = l2 / 4 / (b.mc * 64), nc_pan = l2 / 4 / (b.kc * (kStepW + kStepWd));
  b.nc = std::max<int64_t>(nr, std::min(nc_acc, nc_pan) / nr * nr);
  b.nc = std::min(b.nc, (N + nr - 1) / nr * nr);
  // Enough blocks for every thread (4 each, so a preempted thread does not hold the others up):
  // narrower weight blocks first, then fewer x rows per block (N small, M large).
  const auto blocks = [&] { return ((N + b.nc - 1) / b.nc) * ((M + b.mc - 1) / b.mc); };
  while (blocks() < 4 * threads && b.nc > 4 * nr) b.nc = std::max<int64_t>(4 * nr, b.nc / 2 / nr * nr);
  while (blocks() < 4 * threads && b.mc > 4 * mr) b.mc = std::max<int64_t>(4 * mr, b.mc / 2 / mr * mr);
  return b;
}

}  // namespace mpt
