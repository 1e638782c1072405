// Cache sizes and block sizes of the integer GEMM tiles (portable part; the kernels are per ISA).
#include "cpu/quant_gemm.h"

#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <string>

namespace mpt {

// /sys/devices/system/cpu/cpu0/cache/indexI/size ("48K", "2048K", "480M"), or 0.
static int64_t sys_cache_size(int level, bool data) {
  for (int i = 0; i < 8; ++i) {
    const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(i) + "/";
    std::ifstream lv(dir + "level"), ty(dir + "type"), sz(dir + "size");
    int l = 0;
    std::string type, size;
    if (!(lv >> l) || !(ty >> type) || !(sz >> size)) continue;
    if (l != level || (data ? type == "Instruction" : false)) continue;
    int64_t v = 0;
    size_t pos = 0;
    try {
      v = std::stoll(size, &pos);
    } catch (...) {
      continue;
    }
    const char unit = pos < size.size() ? size[pos] : 'B';
    return unit == 'K' ? v << 10 : unit == 'M' ? v << 20 : unit == 'G' ? v << 30 : v;
  }
  return 0;
}

static int64_t cache_size(int sc_name, int level, bool data, int64_t fallback) {
  long v = -1;
#ifdef _SC_LEVEL1_DCACHE_SIZE
  v = sysconf(sc_name);
#else
  (void)sc_name;
#endif
  if (v > 0) return v;
  const int64_t s = sys_cache_size(level, data);
  return s > 0 ? s : fallback;
}

const CacheSizes& gemm_cache_sizes() {
#ifdef _SC_LEVEL1_DCACHE_SIZE
  static const CacheSizes c{cache_size(_SC_LEVEL1_DCACHE_SIZE, 1, true, 32 << 10),
                            cache_size(_SC_LEVEL2_CACHE_SIZE, 2, true, 1 << 20),
                            cache_size(_SC_LEVEL3_CACHE_SIZE, 3, true, 8 << 20)};
#else
  static const CacheSizes c{cache_size(0, 1, true, 32 << 10), cache_size(0, 2, true, 1 << 20),
                            cache_size(0, 3, true, 8 << 20)};
#endif
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
