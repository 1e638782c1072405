// The machine's memory read bandwidth, measured as a decode step reads its weights: plain vector
// loads streaming a buffer several times the last-level cache, one contiguous part per pool thread.
// A yardstick for benchmarks (bytes of weights per second / this); knows nothing of models.
#pragma once
#include <cstdint>
#include <vector>

namespace mpt {

// The default buffer: 4x the last-level cache (largest_cache_bytes, cache_sizes.h), at least 256 MiB, at most
// half of the free memory.
int64_t default_stream_bytes();

struct ReadBandwidth {
  int64_t bytes = 0;             // buffer size (a multiple of 4 KiB)
  int threads = 0;               // pool threads that read it
  std::vector<double> seconds;   // one per timed pass over the whole buffer
  std::vector<double> cpu_seconds;  // the process's CPU time in each pass (all threads; on a shared
                                    // machine, bytes / this over threads is the rate while running)
  uint64_t checksum = 0;         // of the loads, so that none is optimised away
};

// Allocates bytes (0: default_stream_bytes(); rounded up to 4 KiB), fills it on the pool's threads
// (first touch), reads it once untimed, then `repeats` timed passes with the current ISA's widest
// loads on num_threads() threads (a ThreadLimit caps them).
ReadBandwidth measure_read_bandwidth(int64_t bytes, int repeats);

// `repeats` timed passes over a caller's buffer of `bytes` (a positive multiple of 64) at p, as above, with no
// untimed pass: benchmarks interleave these with the work they compare (the caller warms the buffer).
ReadBandwidth read_passes(const uint8_t* p, int64_t bytes, int repeats);

// Sums n 64-byte lines at p as 64-bit integers (per variant: the read loop itself).
uint64_t read_lines_generic(const uint8_t* p, int64_t n);
uint64_t read_lines_avx2(const uint8_t* p, int64_t n);
uint64_t read_lines_avx512(const uint8_t* p, int64_t n);

}  // namespace mpt
