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
#include <cstdint>
#include <functional>

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

}  // namespace mpt
