// Shared by the CUDA kernels: error handling (CUDA errors become C++ exceptions that pybind11
// maps to Python: std::invalid_argument -> ValueError for bad launch configurations,
// std::runtime_error -> RuntimeError for everything else), the device scope of an entry point, and
// small conversions. Include from .cu files only.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "cpu/attention.h"

namespace mpt::cuda {

inline void check(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return;
  cudaGetLastError();  // clear the sticky-free error so the next call starts clean
  std::string msg = std::string("CUDA error in ") + what + ": " + cudaGetErrorString(e);
  if (e == cudaErrorInvalidConfiguration || e == cudaErrorInvalidValue || e == cudaErrorLaunchOutOfResources ||
      e == cudaErrorInvalidDevice)
    throw std::invalid_argument(msg);
  throw std::runtime_error(msg);
}

// The 4-bit KV cache has CPU kernels only.
inline void require_gpu_kv_dtype(const KvCacheView& c) {
  if (c.dtype == KvDtype::Q4)
    throw std::invalid_argument("4-bit KV caches run on the CPU only: use int8 or a float KV dtype on the GPU");
}

// After every launch: configuration errors surface here (execution errors surface at the next sync).
inline void check_launch(const char* kernel) { check(cudaGetLastError(), kernel); }

// Every entry point starts here: switches to the device the tensors live on for the call and
// back to the caller's current device when it returns or throws (a library call must not leave
// the caller on another device); the stream is torch's current stream, handed over as an integer.
class DeviceScope {
 public:
  DeviceScope(int device, uintptr_t stream) : stream_(reinterpret_cast<cudaStream_t>(stream)) {
    int n = 0;
    check(cudaGetDeviceCount(&n), "cudaGetDeviceCount");
    if (device < 0 || device >= n)
      throw std::invalid_argument("CUDA device " + std::to_string(device) + " does not exist (" + std::to_string(n) +
                                  " visible)");
    check(cudaGetDevice(&prev_), "cudaGetDevice");
    if (prev_ != device) check(cudaSetDevice(device), "cudaSetDevice");
    device_ = device;
  }
  ~DeviceScope() {
    if (prev_ != device_) cudaSetDevice(prev_);
  }
  DeviceScope(const DeviceScope&) = delete;
  DeviceScope& operator=(const DeviceScope&) = delete;
  cudaStream_t stream() const { return stream_; }

 private:
  cudaStream_t stream_;
  int prev_ = -1, device_ = -1;
};

inline unsigned grid_1d(int64_t n, int threads, const char* what) {
  const int64_t g = (n + threads - 1) / threads;
  if (g > 0x7fffffffLL) throw std::invalid_argument(std::string(what) + ": problem too large for one launch");
  return static_cast<unsigned>(g < 1 ? 1 : g);
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

}  // namespace mpt::cuda
