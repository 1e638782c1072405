// measure_read_bandwidth (memory_bandwidth.h): the buffer, the cache size, the timed passes.
#include "cpu/memory_bandwidth.h"

#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>

#include "cpu/cache_sizes.h"
#include "cpu/cpu_features.h"
#include "cpu/thread_pool.h"

namespace mpt {
namespace {

constexpr int64_t kLine = 64, kPage = 4096, kMiB = int64_t(1) << 20;

double process_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

struct FreeBuffer {
  void operator()(uint8_t* p) const { std::free(p); }
};

}  // namespace

int64_t default_stream_bytes() {
  int64_t bytes = std::max<int64_t>(256 * kMiB, 4 * largest_cache_bytes());
  const long pages = sysconf(_SC_AVPHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  if (pages > 0 && page > 0) bytes = std::min<int64_t>(bytes, int64_t(pages) * page / 2);
  return std::max<int64_t>(bytes, kMiB);
}

uint64_t read_lines_generic(const uint8_t* p, int64_t n) {
  uint64_t s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int64_t i = 0; i < n; ++i, p += kLine)
    for (int j = 0; j < 8; ++j) {
      uint64_t v;
      std::memcpy(&v, p + 8 * j, 8);
      s[j] += v;
    }
  return s[0] + s[1] + s[2] + s[3] + s[4] + s[5] + s[6] + s[7];
}

ReadBandwidth measure_read_bandwidth(int64_t bytes, int repeats) {
  if (bytes < 0) throw std::invalid_argument("read bandwidth: bytes must be >= 0 (0: the default), got " +
                                             std::to_string(bytes));
  if (repeats < 1) throw std::invalid_argument("read bandwidth: repeats must be >= 1, got " + std::to_string(repeats));
  if (bytes == 0) bytes = default_stream_bytes();
  bytes = (bytes + kPage - 1) / kPage * kPage;
  const int64_t align = 2 * kMiB;  // aligned_alloc wants a multiple of the alignment
  std::unique_ptr<uint8_t, FreeBuffer> buf(
      static_cast<uint8_t*>(std::aligned_alloc(align, static_cast<size_t>((bytes + align - 1) / align * align))));
  if (!buf) throw std::bad_alloc();
  uint8_t* p = buf.get();
  // First touch on the threads that read: on a NUMA machine each part lands near its reader.
  parallel_for(bytes / kPage, 1, [&](int64_t a, int64_t b) {
    for (int64_t i = a; i < b; ++i) std::memset(p + i * kPage, static_cast<int>(i & 0x7f), kPage);
  });
  const uint64_t warm = read_passes(p, bytes, 1).checksum;  // untimed: page tables and the pool's threads warm
  ReadBandwidth r = read_passes(p, bytes, repeats);
  r.checksum += warm;
  return r;
}

ReadBandwidth read_passes(const uint8_t* p, int64_t bytes, int repeats) {
  if (bytes < kLine || bytes % kLine != 0)
    throw std::invalid_argument("read bandwidth: a buffer of a positive multiple of 64 bytes, got " +
                                std::to_string(bytes));
  if (repeats < 1) throw std::invalid_argument("read bandwidth: repeats must be >= 1, got " + std::to_string(repeats));
  const int64_t lines = bytes / kLine;
  auto read = [&](int64_t a, int64_t b) -> uint64_t {
    switch (current_isa()) {
#if MPT_LITE_X86_SIMD
      case Isa::Avx512: return read_lines_avx512(p + a * kLine, b - a);
      case Isa::Avx2: return read_lines_avx2(p + a * kLine, b - a);
#endif
      default: return read_lines_generic(p + a * kLine, b - a);
    }
  };
  ReadBandwidth r;
  r.bytes = bytes;
  r.threads = static_cast<int>(std::min<int64_t>(num_threads(), lines));
  std::atomic<uint64_t> sum{0};
  for (int i = 0; i < repeats; ++i) {
    const double c0 = process_cpu_seconds();
    const auto t0 = std::chrono::steady_clock::now();
    parallel_for(lines, 1, [&](int64_t a, int64_t b) { sum.fetch_add(read(a, b), std::memory_order_relaxed); });
    r.seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    r.cpu_seconds.push_back(process_cpu_seconds() - c0);
  }
  r.checksum = sum.load();
  return r;
}

}  // namespace mpt
