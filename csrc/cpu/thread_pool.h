// A small persistent thread pool shared by every CPU kernel.
//
// Work is split statically into one contiguous range per thread (a "part"), so results are
// deterministic for a fixed thread count. Parts are claimed, not assigned: the caller runs one, then
// keeps claiming, so a part whose worker has not started it (descheduled on a busy machine, or
// asleep) is run by the caller instead of holding the job up; the caller only waits for parts that
// are already running. Threads spin briefly between jobs (kernels arrive back to back during
// decoding), yielding the CPU after a few microseconds, and then sleep, so an idle pool costs no
// CPU and an oversubscribed machine never makes N threads much slower than one.
//
// Concurrency: any number of threads may call into the pool at once. One job runs on it at a time
// (a job already uses every worker it asks for); other callers wait for it, and so does
// set_num_threads, which therefore never pulls the pool from under a running job. A call that
// needs a single thread (ThreadLimit 1, or little work) runs inline and waits for nothing.
//
// MPT_LITE_POOL_STATS=1 prints counters at exit (jobs, parts run by the caller and by workers,
// late workers, sleeps, time the caller waited), for profiling.
#pragma once
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <functional>
#include <type_traits>

namespace mpt {

// Threads a parallel_for from this thread may use now: the pool's size, capped by a ThreadLimit;
// inside a job (in fn of a parallel_for), the number of threads running that job.
int num_threads();
// The process default. n <= 0 resets it to MPT_LITE_NUM_THREADS, else the number of cores this
// process may use. Waits for the job running on the pool, if any.
void set_num_threads(int n);

// Caps the threads of the parallel_for calls this thread makes while the limit lives (n <= 0: no
// cap beyond the pool's size). The per-call thread count of a kernel entry point.
class ThreadLimit {
 public:
  explicit ThreadLimit(int n);
  ~ThreadLimit();
  ThreadLimit(const ThreadLimit&) = delete;
  ThreadLimit& operator=(const ThreadLimit&) = delete;

 private:
  int prev_;
};

// Calls fn(begin, end) on disjoint ranges covering [0, n); each range (except the last) is a
// multiple of `align`. Returns when all are done. Runs inline when one thread suffices, and when
// called from inside a job (nested calls do not deadlock, they just do not fan out again).
void parallel_for(int64_t n, int64_t align, const std::function<void(int64_t, int64_t)>& fn);

// Rows handed out in chunks from a shared counter: a thread that was preempted (a busy machine)
// does not hold the others up. Each output row is computed whole by whichever thread takes it, in
// a fixed order, so results do not depend on who takes what. fn.make_worker() gives each thread
// its callable (with its own scratch buffers), called as worker(begin, end) per chunk.
// Decode reads each weight row once: chunks long enough that every thread streams long contiguous
// runs (the hardware prefetchers ramp up per run), short enough (8 per thread) to rebalance.
static inline int64_t decode_chunk(int64_t n) { return std::max<int64_t>(16, n / (int64_t(num_threads()) * 8)); }

// A worker callable as worker(begin, end, next_begin) claims its next chunk before it runs the current
// one and is told where that chunk starts (-1: none), so that it can prefetch the next chunk's first
// weights while it finishes this one (threads take alternate chunks, so each chunk starts a new stream).
// It holds at most one chunk that no other thread may take.
template <class Fn>
void for_row_chunks(int64_t n, int64_t chunk, Fn&& fn) {
  const int64_t nchunks = (n + chunk - 1) / chunk;
  std::atomic<int64_t> next{0};
  parallel_for(std::min<int64_t>(num_threads(), nchunks), 1, [&](int64_t, int64_t) {
    auto work = fn.make_worker();
    auto claim = [&] { return next.fetch_add(1, std::memory_order_relaxed); };
    if constexpr (std::is_invocable_v<decltype(work)&, int64_t, int64_t, int64_t>) {
      for (int64_t c = claim(); c < nchunks;) {
        const int64_t c2 = claim();
        work(c * chunk, std::min(n, (c + 1) * chunk), c2 < nchunks ? c2 * chunk : -1);
        c = c2;
      }
    } else {
      for (int64_t c; (c = claim()) < nchunks;) work(c * chunk, std::min(n, (c + 1) * chunk));
    }
  });
}

}  // namespace mpt
