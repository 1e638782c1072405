// The one pybind11 module, mpt_lite._C. Thin argument checks only: ops.py owns tensors, dtypes
// and shapes and hands raw buffers (pointers as integers) and sizes to these functions.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "cpu/cpu_features.h"
#include "cpu/thread_pool.h"

namespace py = pybind11;

#if MPT_LITE_WITH_CUDA
namespace mpt::cuda {
int device_count();
}
#endif

static py::dict cpu_features_dict() {
  const mpt::CpuFeatures& f = mpt::cpu_features();
  py::dict d;
  d["avx2"] = f.avx2;
  d["fma"] = f.fma;
  d["f16c"] = f.f16c;
  d["avx512f"] = f.avx512f;
  d["avx512bw"] = f.avx512bw;
  d["avx512vl"] = f.avx512vl;
  d["avx512dq"] = f.avx512dq;
  d["avx512vnni"] = f.avx512vnni;
  d["avx512bf16"] = f.avx512bf16;
  d["avx512vbmi"] = f.avx512vbmi;
  return d;
}

PYBIND11_MODULE(_C, m) {
  m.doc() = "mpt_lite kernels (no torch linkage; see mpt_lite/ops.py)";

  // ---- CPU features, kernel variant, threads ----
  m.def("cpu_features", &cpu_features_dict, "CPU features detected at run time");
  m.def("supported_isas", &mpt::supported_isa_names, "kernel variants this CPU can run");
  m.def("current_isa", [] { return std::string(mpt::isa_name(mpt::current_isa())); });
  m.def("set_isa", [](const std::string& name) { mpt::set_isa(mpt::isa_from_name(name)); }, py::arg("name"));
  m.def("num_threads", &mpt::num_threads);
  m.def("set_num_threads", &mpt::set_num_threads, py::arg("n"));

  // ---- CUDA ----
#if MPT_LITE_WITH_CUDA
  m.attr("with_cuda") = true;
  m.def("cuda_device_count", &mpt::cuda::device_count);
#else
  m.attr("with_cuda") = false;
  m.def("cuda_device_count", [] { return 0; });
#endif

  // ---- quantized matmuls (csrc/cpu/quant_*.cpp) ----

  // ---- paged KV cache and attention (csrc/cpu/attention_*.cpp) ----
}
