#include "cpu/thread_pool.h"

#include <sched.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace mpt {
namespace {

constexpr int kSpinMicros = 1000;

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
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

thread_local int t_limit = 0;  // this thread's ThreadLimit (0: none)
thread_local int t_team = 0;   // inside a job (a worker, or the caller running part 0): its thread count

class Pool {
 public:
  explicit Pool(int n) : n_(n) {
    for (int i = 1; i < n_; ++i) workers_.emplace_back([this, i] { loop(i); });
  }
  ~Pool() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stop_ = true;
      generation_.fetch_add(1);
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
  }
  int size() const { return n_; }

  // One job at a time: the caller holds g_mu (below) for the whole call.
  void run(int parts, const std::function<void(int)>& job) {
    job_ = &job;
    parts_ = parts;
    error_ = nullptr;
    // Every worker acknowledges every job (even with no part in it), so none can lag into the next.
    pending_.store(n_ - 1);
    {
      std::lock_guard<std::mutex> lk(mu_);
      generation_.fetch_add(1, std::memory_order_release);
    }
    cv_.notify_all();
    call(0);
    while (pending_.load(std::memory_order_acquire) > 0) std::this_thread::yield();
    job_ = nullptr;
    if (error_) std::rethrow_exception(error_);
  }

 private:
  void call(int i) {
    try {
      (*job_)(i);
    } catch (...) {
      std::lock_guard<std::mutex> lk(mu_);
      if (!error_) error_ = std::current_exception();
    }
  }

  void loop(int i) {
    uint64_t seen = 0;
    for (;;) {
      uint64_t g;
      // Spin ~1 ms (decode issues kernels every few tens of microseconds, with Python between
      // them); a sleeping worker costs a futex wake-up per kernel, measured here at 2-3x the
      // kernel's own time for small matmuls.
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::microseconds(kSpinMicros);
      for (int spins = 0; (g = generation_.load(std::memory_order_acquire)) == seen; ++spins) {
        cpu_relax();
        if ((spins & 255) == 0 && std::chrono::steady_clock::now() > deadline) break;
      }
      if (g == seen) {
        std::unique_lock<std::mutex> lk(mu_);
        cv_.wait(lk, [&] { return generation_.load() != seen; });
        g = generation_.load();
      }
      seen = g;
      if (stop_) return;
      if (i < parts_) {
        t_team = parts_;
        call(i);
        t_team = 0;
      }
      pending_.fetch_sub(1, std::memory_order_acq_rel);
    }
  }

  int n_;
  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  const std::function<void(int)>* job_ = nullptr;
  int parts_ = 0;
  bool stop_ = false;
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
