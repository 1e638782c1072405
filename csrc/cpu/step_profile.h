// MPT_LITE_STEP_PROFILE=1: wall time of each kind of op of the native step (decode_step.cpp), summed
// over the process, decode steps apart from prompt steps, and printed to stderr at exit with the weight
// bytes each matmul kind read and the rate that makes (profiling only; off, each op costs one
// predictable branch). Not for concurrent steps of several plans.
#pragma once
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

namespace mpt {

enum class StepOp : int { Embed, Norm, Qkv, Attention, OutProj, UpProj, Gelu, DownProj, Residual, Logits, Count };

class StepProfile {
 public:
  static StepProfile& get() {
    static StepProfile p;
    return p;
  }
  bool on() const { return on_; }
  // The ops that follow belong to a decode step (one new token per sequence) or a prompt step.
  void begin_step(bool decode) { kind_ = decode ? 0 : 1; }
  void add(StepOp op, int64_t ns, int64_t bytes) {
    ns_[kind_][static_cast<int>(op)] += ns;
    bytes_[kind_][static_cast<int>(op)] += bytes;
    ++calls_[kind_][static_cast<int>(op)];
  }
  void step_done() { ++steps_[kind_]; }
  ~StepProfile() {
    if (!on_) return;
    for (int kind = 0; kind < 2; ++kind) print(kind);
  }

 private:
  static constexpr int kOps = static_cast<int>(StepOp::Count);
  const bool on_ = [] {
    const char* e = std::getenv("MPT_LITE_STEP_PROFILE");
    return e && *e && *e != '0';
  }();
  int kind_ = 0;  // 0: decode steps, 1: prompt steps
  int64_t ns_[2][kOps] = {}, bytes_[2][kOps] = {}, calls_[2][kOps] = {}, steps_[2] = {};

  void print(int kind) const {
    static const char* names[] = {"embed", "norms", "Wqkv", "attention", "out_proj", "up_proj", "gelu",
                                  "down_proj", "residuals", "logits"};
    const int64_t steps = steps_[kind];
    if (!steps) return;
    int64_t total = 0;
    for (int i = 0; i < kOps; ++i) total += ns_[kind][i];
    std::fprintf(stderr, "[mpt_lite step] %lld %s steps, %.3f ms a step in ops\n", (long long)steps,
                 kind ? "prompt" : "decode", total / 1e6 / steps);
    for (int i = 0; i < kOps; ++i) {
      if (!calls_[kind][i]) continue;
      std::fprintf(stderr, "  %-16s %8.3f ms a step %5.1f%%", names[i], ns_[kind][i] / 1e6 / steps,
                   100.0 * ns_[kind][i] / total);
      if (bytes_[kind][i]) std::fprintf(stderr, "  %6.1f GB/s of weights", double(bytes_[kind][i]) / ns_[kind][i]);
      std::fprintf(stderr, "\n");
    }
  }
};

// Times the enclosing scope as one op of `kind` when profiling is on.
class StepTimer {
 public:
  explicit StepTimer(StepOp op, int64_t bytes = 0) : op_(op), bytes_(bytes) {
    if (StepProfile::get().on()) t0_ = std::chrono::steady_clock::now();
  }
  ~StepTimer() { stop(); }
  // Ends the op now (once; the destructor then does nothing).
  void stop() {
    if (stopped_ || !StepProfile::get().on()) return;
    stopped_ = true;
    const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0_);
    StepProfile::get().add(op_, ns.count(), bytes_);
  }

 private:
  StepOp op_;
  int64_t bytes_;
  bool stopped_ = false;
  std::chrono::steady_clock::time_point t0_{};
};

}  // namespace mpt
