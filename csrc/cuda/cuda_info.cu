#include "cuda/ops_cuda.h"
#include "cuda/cuda_common.cuh"

namespace mpt::cuda {

// 0 when no driver or no GPU is present (the static runtime loads the driver lazily).
int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

}  // namespace mpt::cuda
