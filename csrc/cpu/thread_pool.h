// A small persistent thread pool shared by every CPU kernel.
//
// Work is split statically into one contiguous range per thread, so results are deterministic for a
// fixed thread count. Threads spin briefly between jobs (kernels arrive back to back during decoding)
// and then sleep, so an idle pool costs no CPU.
#pragma once
#include <cstdint>
#include <functional>

namespace mpt {

int num_threads();
// n <= 0 resets to the default: MPT_LITE_NUM_THREADS, else the number of cores this process may use.
void set_num_threads(int n);

// Calls fn(begin, end) on disjoint ranges covering [0, n); each range (except the last) is a
// multiple of `align`. Returns when all are done. Runs inline when one thread suffices.
void parallel_for(int64_t n, int64_t align, const std::function<void(int64_t, int64_t)>& fn);

}  // namespace mpt
