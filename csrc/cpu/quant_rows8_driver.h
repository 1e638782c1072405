// The driver both rows8 tile kernels share (quant_q8_rows8_avx2.cpp, quant_q8_rows8_avx512.cpp): the x code
// sums that bring back the weight codes' offset, and the 8-row sets split among the threads in whole layout
// tiles, so a worker's range [n0, n1) starts at a tile and each tile of it holds rows8_tile_sets sets. Include
// only from an ISA's file: it lives in an anonymous namespace, so each ISA's copy gets that file's flags alone.
//
// A kernel Kernel<F> (F = Int4, Nf4, and Int8 where Kernel<F>::kReadsInt8) is an aggregate {w, x, init, bias,
// y} with make_worker() (for_row_chunks).
#pragma once
#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <vector>

#include "cpu/quant_formats.h"
#include "cpu/thread_pool.h"

namespace mpt {
namespace {

template <template <QFormat> class Kernel>
void run_rows8(const QWeight& w, const Q8Rows& x, const float* bias, float* y) {
  const bool nf4 = w.fmt == QFormat::Nf4, int8 = w.fmt == QFormat::Int8;
  std::vector<int32_t> init;  // [M, KB]: -8 (nf4: -64, int8: -128) x the block's x code sum
  q8_block_sums(x, nf4 ? -kNf4CodeOffset : int8 ? -128 : -8, init);
  const int64_t sets = w.N / 8;
  const int64_t chunk =
      (std::max<int64_t>(decode_chunk(w.N) / 8, 1) + kRows8TileSets - 1) / kRows8TileSets * kRows8TileSets;
  if (int8) {
    if constexpr (Kernel<QFormat::Int8>::kReadsInt8)
      return for_row_chunks(sets, chunk, Kernel<QFormat::Int8>{w, x, init, bias, y});
    else
      throw std::logic_error("this rows8 kernel reads no int8");
  }
  if (nf4) return for_row_chunks(sets, chunk, Kernel<QFormat::Nf4>{w, x, init, bias, y});
  for_row_chunks(sets, chunk, Kernel<QFormat::Int4>{w, x, init, bias, y});
}

}  // namespace
}  // namespace mpt
