#include "cpu/thread_pool.h"

#include <sched.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace mpt {
namespace {

// Waiting, for a worker between jobs and for the caller at the end of a job: pause-spin briefly
// (a job follows within microseconds during decoding), then spin with sched_yield (on a busy
// machine the CPU goes to whoever is runnable: another worker, the caller, other processes), then
// sleep on a condition variable. A worker spins up to kWorkerSpinMicros between jobs; on a quiet
// machine decode issues kernels every few tens of microseconds, so it rarely sleeps (a futex wake
// per kernel costs 2-3x the kernel's own time for small matmuls). A worker that keeps arriving after
// the caller has already taken every part (the machine is oversubscribed: it was not running)
// spins less and sleeps sooner, so that it stops taking CPU time from the caller.
constexpr int kPauseMicros = 20;
constexpr int kWorkerSpinMicros = 1000;
constexpr int kCallerSpinMicros = 200;
constexpr int kYieldedMicros = 50;

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield" ::: "memory");
#endif
}

using Clock = std::chrono::steady_clock;

// Spins until done() or until `micros` have passed; pause-spins the first kPauseMicros, then yields.
template <class Done>
bool spin_until(Done&& done, int micros) {
  const auto t0 = Clock::now();
  for (int i = 0;; ++i) {
    if (done()) return true;
    if ((i & 63) == 63) {
      const auto us = std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - t0).count();
      if (us >= micros) return false;
      if (us >= kPauseMicros) {
        // A yield that gave the CPU away for a while means other threads are waiting for it: the
        // machine is oversubscribed, and spinning on would only take time from them (and from our
        // own caller or workers). Stop and sleep.
        const auto y0 = Clock::now();
        sched_yield();
        if (Clock::now() - y0 > std::chrono::microseconds(kYieldedMicros)) return done();
        continue;
      }
    }
    cpu_relax();
  }
}

int default_threads() {
  if (const char* env = std::getenv("MPT_LITE_NUM_THREADS")) {
    int n = std::atoi(env);
    if (n > 0) return n;
  }
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
  return std::max(1u, std::thread::hardware_concurrency());
}

// MPT_LITE_POOL_STATS=1: counters of what the pool did, printed to stderr at exit (profiling only;
// off, each costs one predictable branch).
struct Stats {
  const bool on = [] {
    const char* e = std::getenv("MPT_LITE_POOL_STATS");
    return e && *e && *e != '0';
  }();
  std::atomic<uint64_t> jobs{0}, parts{0}, caller_parts{0}, worker_parts{0}, worker_late{0}, worker_sleeps{0},
      caller_sleeps{0}, caller_wait_ns{0};
  void add(std::atomic<uint64_t>& c, uint64_t n = 1) {
    if (on) c.fetch_add(n, std::memory_order_relaxed);
  }
  ~Stats() {
    if (!on) return;
    std::fprintf(stderr,
                 "[mpt_lite pool] jobs %llu, parts %llu: run by the caller %llu (%llu beyond one each), by "
                 "workers %llu; workers arriving after every part was taken %llu, worker sleeps %llu; caller "
                 "waits for running parts %.1f ms in all, %llu of them asleep\n",
                 (unsigned long long)jobs, (unsigned long long)parts, (unsigned long long)caller_parts,
                 (unsigned long long)(caller_parts - jobs), (unsigned long long)worker_parts,
                 (unsigned long long)worker_late, (unsigned long long)worker_sleeps, caller_wait_ns / 1e6,
                 (unsigned long long)caller_sleeps);
  }
};
Stats g_stats;

thread_local int t_limit = 0;  // this thread's ThreadLimit (0: none)
thread_local int t_team = 0;   // inside a job (a worker, or the caller running part 0): its thread count

// A job's parts are claimed from one atomic word: generation (bits 32-63), number of parts (16-31),
// next unclaimed part (0-15). The caller claims parts too, and after its own it keeps claiming, so
// a worker that has not started (descheduled, asleep) by then has its part run by the caller
// instead of holding the job up: the caller only ever waits for parts that are already running.
// Which thread runs a part does not change the part's range, so results are unchanged.
constexpr uint64_t kPartMask = 0xFFFF;
inline int next_part(uint64_t s) { return static_cast<int>(s & kPartMask); }
inline int num_parts(uint64_t s) { return static_cast<int>((s >> 16) & kPartMask); }
inline uint64_t generation(uint64_t s) { return s >> 32; }

class Pool {
 public:
  explicit Pool(int n) : n_(n) {
    for (int i = 1; i < n_; ++i) workers_.emplace_back([this] { loop(); });
  }
  ~Pool() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stop_.store(true);
      state_.store((generation(state_.load()) + 1) << 32);
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
  }
  int size() const { return n_; }

  // One job at a time: the caller holds g_mu (below) for the whole call.
  void run(int parts, const std::function<void(int)>& job) {
    parts = std::min<int>(parts, static_cast<int>(kPartMask));
    job_ = &job;
    error_ = nullptr;
    done_.store(0, std::memory_order_relaxed);
    const uint64_t s = ((generation(state_.load(std::memory_order_relaxed)) + 1) << 32) |
                       (static_cast<uint64_t>(parts) << 16);
    state_.store(s, std::memory_order_seq_cst);  // publishes job_, done_ = 0
    if (sleepers_.load(std::memory_order_seq_cst) > 0) {
      { std::lock_guard<std::mutex> lk(mu_); }
      cv_.notify_all();
    }
    int ran = 0;
    for (int i; (i = claim(s)) >= 0; ++ran) call(i);
    if (ran) done_.fetch_add(ran, std::memory_order_acq_rel);
    g_stats.add(g_stats.jobs);
    g_stats.add(g_stats.parts, parts);
    g_stats.add(g_stats.caller_parts, ran);
    auto all_done = [&] { return done_.load(std::memory_order_acquire) == parts; };
    if (!all_done()) {
      const auto t0 = g_stats.on ? Clock::now() : Clock::time_point();
      if (!spin_until(all_done, kCallerSpinMicros)) {
        g_stats.add(g_stats.caller_sleeps);
        std::unique_lock<std::mutex> lk(mu_);
        caller_waiting_.store(true, std::memory_order_seq_cst);
        done_cv_.wait(lk, [&] { return done_.load(std::memory_order_seq_cst) == parts; });
        caller_waiting_.store(false, std::memory_order_relaxed);
      }
      if (g_stats.on)
        g_stats.add(g_stats.caller_wait_ns,
                    std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0).count());
    }
    job_ = nullptr;
    if (error_) std::rethrow_exception(error_);
  }

 private:
  // Claims the next part of the job whose claim word started as `job` (its generation and parts);
  // -1 when none is left or that job is over.
  int claim(uint64_t job) {
    uint64_t s = state_.load(std::memory_order_acquire);
    while (generation(s) == generation(job) && next_part(s) < num_parts(s))
      if (state_.compare_exchange_weak(s, s + 1, std::memory_order_acq_rel, std::memory_order_acquire))
        return next_part(s);
    return -1;
  }

  void call(int i) {
    try {
      (*job_)(i);
    } catch (...) {
      std::lock_guard<std::mutex> lk(mu_);
      if (!error_) error_ = std::current_exception();
    }
  }

  void loop() {
    uint64_t seen = 0;  // the claim word last seen with nothing left to claim
    int spin_us = kWorkerSpinMicros;
    for (;;) {
      uint64_t s = state_.load(std::memory_order_acquire);
      if (s == seen) {
        if (!spin_until([&] { return (s = state_.load(std::memory_order_acquire)) != seen; }, spin_us)) {
          g_stats.add(g_stats.worker_sleeps);
          std::unique_lock<std::mutex> lk(mu_);
          sleepers_.fetch_add(1, std::memory_order_seq_cst);
          cv_.wait(lk, [&] { return (s = state_.load(std::memory_order_seq_cst)) != seen; });
          sleepers_.fetch_sub(1, std::memory_order_relaxed);
        }
      }
      if (stop_.load()) return;
      // Arrived at a job with nothing left to claim: the caller ran this worker's share (or the
      // others did) because this thread was not running. Spin less next time; more when useful.
      int ran = 0;
      const int parts = num_parts(s);
      for (int i; (i = claim(s)) >= 0; ++ran) {
        t_team = parts;
        call(i);
        t_team = 0;
      }
      if (ran) {
        g_stats.add(g_stats.worker_parts, ran);
        spin_us = std::min(kWorkerSpinMicros, spin_us * 2);
        // seq_cst pairs with caller_waiting_ so that a caller going to sleep is always woken.
        if (done_.fetch_add(ran, std::memory_order_seq_cst) + ran == parts &&
            caller_waiting_.load(std::memory_order_seq_cst)) {
          { std::lock_guard<std::mutex> lk(mu_); }
          done_cv_.notify_one();
        }
      } else if (next_part(s) == num_parts(s) && num_parts(s) > 0) {
        g_stats.add(g_stats.worker_late);
        spin_us = std::max(kPauseMicros, spin_us / 2);
      }
      seen = (s & ~kPartMask) | static_cast<uint64_t>(num_parts(s));  // this job, fully claimed
    }
  }

  int n_;
  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable cv_;       // workers sleep here between jobs
  std::condition_variable done_cv_;  // the caller sleeps here for running parts
  std::atomic<uint64_t> state_{0};   // the claim word (above)
  std::atomic<int> done_{0};         // parts finished in the current job
  std::atomic<int> sleepers_{0};
  std::atomic<bool> caller_waiting_{false};
  std::atomic<bool> stop_{false};
  const std::function<void(int)>* job_ = nullptr;
  std::exception_ptr error_;
};

// Held for a whole job, for creating the pool and for resizing it: a resize waits for the running
// job, and a job never sees the pool replaced under it. Simpler than per-caller job slots, and no
// slower: a job already has every core it asked for, so a second one could only oversubscribe.
std::mutex g_mu;
std::unique_ptr<Pool> g_pool;  // guarded by g_mu
std::atomic<int> g_size{0};    // g_pool's size, readable while a job runs (0: no pool yet)

Pool& pool_locked() {
  if (!g_pool) {
    g_pool = std::make_unique<Pool>(default_threads());
    g_size.store(g_pool->size(), std::memory_order_release);
  }
  return *g_pool;
}

int pool_size() {
  const int n = g_size.load(std::memory_order_acquire);
  if (n > 0) return n;
  std::lock_guard<std::mutex> lk(g_mu);
  return pool_locked().size();
}

struct InJob {
  explicit InJob(int parts) { t_team = parts; }
  ~InJob() { t_team = 0; }
};

}  // namespace

int num_threads() {
  if (t_team > 0) return t_team;
  const int n = pool_size();
  return t_limit > 0 ? std::min(n, t_limit) : n;
}

void set_num_threads(int n) {
  std::lock_guard<std::mutex> lk(g_mu);
  g_pool.reset();
  g_pool = std::make_unique<Pool>(n > 0 ? n : default_threads());
  g_size.store(g_pool->size(), std::memory_order_release);
}

ThreadLimit::ThreadLimit(int n) : prev_(t_limit) { t_limit = n > 0 ? n : 0; }
ThreadLimit::~ThreadLimit() { t_limit = prev_; }

void parallel_for(int64_t n, int64_t align, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  align = std::max<int64_t>(1, align);
  const int64_t units = (n + align - 1) / align;
  if (t_team > 0 || std::min<int64_t>(num_threads(), units) <= 1) {  // nested calls run inline
    fn(0, n);
    return;
  }
  std::unique_lock<std::mutex> lk(g_mu);
  Pool& p = pool_locked();  // its size may have changed since num_threads()
  const int cap = t_limit > 0 ? std::min(p.size(), t_limit) : p.size();
  const int parts = static_cast<int>(std::min<int64_t>(cap, units));
  if (parts <= 1) {
    lk.unlock();
    fn(0, n);
    return;
  }
  const int64_t per = (units + parts - 1) / parts;
  std::function<void(int)> job = [&](int i) {
    int64_t b = std::min(n, i * per * align), e = std::min(n, (i + 1) * per * align);
    if (b < e) fn(b, e);
  };
  InJob in_job(parts);
  p.run(parts, job);
}

}  // namespace mpt
