// The CPU's cache sizes, read once from what the machine reports; no kernel or model knowledge.
#pragma once
#include <cstdint>

namespace mpt {

// Bytes of this CPU's data (or unified) cache at `level` (1-4): the kernel's description of cpu0's caches
// (/sys/devices/system/cpu/cpu0/cache), else glibc's sysconf, else 0. /sys comes first because it is the cache
// a core reaches: in a VM glibc can count the host socket's L3 (384 MiB on a 2-vCPU Zen 5 guest whose /sys and
// lscpu say 32 MiB, one CCX).
int64_t cpu_cache_bytes(int level);

// The largest of them; 0 when none is known.
int64_t largest_cache_bytes();

}  // namespace mpt
