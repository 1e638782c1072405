#include "cpu/cache_sizes.h"

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <string>

namespace mpt {
namespace {

// "48K", "1024K", "32M" (a /sys cache size) in bytes; 0 when unreadable.
int64_t parse_size(const std::string& s) {
  char* end = nullptr;
  const long long v = std::strtoll(s.c_str(), &end, 10);
  if (v <= 0 || end == s.c_str()) return 0;
  const char u = *end;
  return v * (u == 'K' ? int64_t(1) << 10 : u == 'M' ? int64_t(1) << 20 : u == 'G' ? int64_t(1) << 30 : 1);
}

int64_t sys_cache_bytes(int level) {
  for (int i = 0; i < 16; ++i) {
    const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(i) + "/";
    std::ifstream lv(dir + "level"), ty(dir + "type"), sz(dir + "size");
    int l = 0;
    std::string type, size;
    if (!(lv >> l) || !(ty >> type) || !(sz >> size)) continue;
    if (l == level && type != "Instruction") return parse_size(size);
  }
  return 0;
}

int64_t sysconf_cache_bytes(int level) {
  long v = -1;
#ifdef _SC_LEVEL1_DCACHE_SIZE
  const int names[] = {_SC_LEVEL1_DCACHE_SIZE, _SC_LEVEL2_CACHE_SIZE, _SC_LEVEL3_CACHE_SIZE, _SC_LEVEL4_CACHE_SIZE};
  if (level >= 1 && level <= 4) v = sysconf(names[level - 1]);
#else
  (void)level;
#endif
  return v > 0 ? v : 0;
}

}  // namespace

int64_t cpu_cache_bytes(int level) {
  static const auto sizes = [] {
    struct { int64_t b[5]; } s{};
    for (int l = 1; l <= 4; ++l) {
      const int64_t sys = sys_cache_bytes(l);
      s.b[l] = sys > 0 ? sys : sysconf_cache_bytes(l);
    }
    return s;
  }();
  return level >= 1 && level <= 4 ? sizes.b[level] : 0;
}

int64_t largest_cache_bytes() {
  int64_t best = 0;
  for (int l = 1; l <= 4; ++l) best = std::max(best, cpu_cache_bytes(l));
  return best;
}

}  // namespace mpt
