// Paged ALiBi attention over the KV cache, decode and prefill (new tokens after a cached prefix),
// in one kernel family. One warp owns one (query token, head, partition of the keys):
//   - keys are taken 32 at a time, a lane per key: lane j reads key j's row through the block
//     table and computes (q . k) * scale + slope * (key_pos - query_pos);
//   - an online softmax (running max m and sum l) folds each chunk in; each lane then
//     accumulates its own head_dim slice of sum p_j * v_j, with p_j broadcast by shuffles, the
//     V rows of eight keys loaded together.
// When there are too few (token, head) pairs to fill the GPU (decode of a small batch), contexts
// are cut into partitions of 64-512 keys (vLLM's paged attention v2), sized for ~kTargetWarps
// warps per launch; a second kernel merges the partitions' (max, sum, normalised output) triples. Causality: query i of a sequence with q_len new tokens
// and ctx_len tokens in all sits at position ctx_len - q_len + i and sees keys 0..position.
// Same arithmetic as ops.ref_paged_attention_* up to float32 summation order.
#include <algorithm>
#include <string>

#include "cuda/ops_cuda.h"
#include "cuda/cuda_common.cuh"

namespace mpt::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kPartition = 512;     // keys per partition at most
constexpr int kMinPartition = 64;   // and at least, when partitions are cut smaller to fill the GPU
constexpr int kTargetWarps = 4096;  // (row, head, partition) warps a launch aims at
constexpr int kMaxHeadDim = 256;

struct Params {
  const float* q;
  float* out;
  const void* k;
  const void* v;
  const float* k_scale;
  const float* v_scale;
  const int32_t* block_tables;
  const int32_t* context_lens;
  const int32_t* query_start_loc;  // null: decode (row s is sequence s)
  const float* slopes;
  float scale;
  int num_seqs, num_heads, kv_heads, head_dim, block_size, max_blocks;
  int64_t n_rows;
  int num_parts, part_size;
  float* part_out;  // [rows][heads][parts][head_dim], normalised per partition
  float* part_max;  // [rows][heads][parts]
  float* part_sum;
};

template <typename T>
__device__ __forceinline__ float to_f32(T x);
template <>
__device__ __forceinline__ float to_f32<float>(float x) { return x; }
template <>
__device__ __forceinline__ float to_f32<__nv_bfloat16>(__nv_bfloat16 x) { return __bfloat162float(x); }
template <>
__device__ __forceinline__ float to_f32<__half>(__half x) { return __half2float(x); }
template <>
__device__ __forceinline__ float to_f32<int8_t>(int8_t x) { return static_cast<float>(x); }

// q . row over D <= DMAX elements; 16-byte loads when the row allows (VEC: D * sizeof(T) % 16 ==
// 0), issued eight at a time before their products (a loop that used each load at once waited
// one memory round trip per 16 bytes: ~16 us per chunk of 32 keys on an H200).
template <typename T, bool VEC, int DMAX>
__device__ __forceinline__ float dot_row(const float* __restrict__ q, const T* __restrict__ row, int D) {
  float s = 0.f;
  if constexpr (VEC) {
    constexpr int E = 16 / sizeof(T), NV = (DMAX + E - 1) / E, B = 8;
#pragma unroll
    for (int b0 = 0; b0 < NV; b0 += B) {
      uint4 raw[B];
#pragma unroll
      for (int i = 0; i < B; ++i)
        if (b0 + i < NV && (b0 + i) * E < D) raw[i] = __ldg(reinterpret_cast<const uint4*>(row) + b0 + i);
#pragma unroll
      for (int i = 0; i < B; ++i) {
        if (b0 + i < NV && (b0 + i) * E < D) {
          const T* e = reinterpret_cast<const T*>(&raw[i]);
#pragma unroll
          for (int j = 0; j < E; ++j) s += q[(b0 + i) * E + j] * to_f32<T>(e[j]);
        }
      }
    }
  } else {
#pragma unroll 8
    for (int d = 0; d < D; ++d) s += q[d] * to_f32<T>(row[d]);
  }
  return s;
}

// Query row -> its sequence s and its position (decode rows are sequences; prefill rows are
// found in query_start_loc).
__device__ __forceinline__ int row_position(const Params& p, int64_t row, int& s) {
  int q_len, q_first;
  if (!p.query_start_loc) {
    s = static_cast<int>(row), q_len = 1, q_first = s;
  } else {
    int lo = 0, hi = p.num_seqs;  // the last s with query_start_loc[s] <= row
    while (hi - lo > 1) {
      const int mid = (lo + hi) / 2;
      if (p.query_start_loc[mid] <= row) lo = mid;
      else hi = mid;
    }
    s = lo, q_first = p.query_start_loc[s], q_len = p.query_start_loc[s + 1] - q_first;
  }
  return p.context_lens[s] - q_len + static_cast<int>(row - q_first);
}

template <typename T, int NI, bool VEC>
__global__ void __launch_bounds__(kWarps * 32) attention_kernel(Params p) {
  extern __shared__ float smem[];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t item = int64_t(blockIdx.x) * kWarps + warp;
  const int H = p.num_heads, D = p.head_dim, bs = p.block_size;
  if (item >= p.n_rows * H * p.num_parts) return;
  const int part = static_cast<int>(item % p.num_parts);
  const int h = static_cast<int>((item / p.num_parts) % H);
  const int64_t row = item / (int64_t(p.num_parts) * H);

  int s;
  const int pos = row_position(p, row, s);
  const int kbeg = part * p.part_size, kend = min(kbeg + p.part_size, pos + 1);
  const int kvh = h / (H / p.kv_heads);
  const float slope = p.slopes ? p.slopes[h] : 0.f;
  const int32_t* table = p.block_tables + int64_t(s) * p.max_blocks;
  const T* kc = static_cast<const T*>(p.k);
  const T* vc = static_cast<const T*>(p.v);
  const int64_t slot_stride = int64_t(p.kv_heads) * D;

  float* qs = smem + warp * D;
  const float* qrow = p.q + (row * H + h) * D;
  for (int d = lane; d < D; d += 32) qs[d] = qrow[d];
  __syncwarp();

  float m = -INFINITY, l = 0.f, acc[NI];
#pragma unroll
  for (int i = 0; i < NI; ++i) acc[i] = 0.f;

  for (int c0 = kbeg; c0 < kend; c0 += 32) {
    const int key = c0 + lane;
    const bool valid = key < kend;
    int64_t slot = 0;
    float score = -INFINITY;
    if (valid) {
      slot = int64_t(table[key / bs]) * bs + key % bs;
      float dot = dot_row<T, VEC, 32 * NI>(qs, kc + slot * slot_stride + int64_t(kvh) * D, D);
      if (p.k_scale) dot *= p.k_scale[slot * p.kv_heads + kvh];
      score = dot * p.scale + slope * static_cast<float>(key - pos);
    }
    const float mnew = fmaxf(m, warp_max(score));
    const float corr = m == -INFINITY ? 0.f : expf(m - mnew);
    const float pr = valid ? expf(score - mnew) : 0.f;
    l = l * corr + warp_sum(pr);
#pragma unroll
    for (int i = 0; i < NI; ++i) acc[i] *= corr;
    m = mnew;
    // p_j * v_j, eight keys at a time: their V loads are issued together (one memory round trip
    // per eight keys, not per key)
    const int nvalid = min(32, kend - c0);
    for (int j0 = 0; j0 < nvalid; j0 += 8) {
      float pw[8], vv[8][NI];
#pragma unroll
      for (int u = 0; u < 8; ++u) {
        const int j = j0 + u;
        const float pj = __shfl_sync(0xffffffffu, pr, j & 31);
        const int64_t sj = __shfl_sync(0xffffffffu, slot, j & 31);
        const bool live = j < nvalid;
        const T* vrow = vc + sj * slot_stride + int64_t(kvh) * D;
        const float vs = (p.v_scale && live) ? p.v_scale[sj * p.kv_heads + kvh] : 1.f;
        pw[u] = live ? pj * vs : 0.f;
#pragma unroll
        for (int i = 0; i < NI; ++i) {
          const int d = lane + 32 * i;
          vv[u][i] = (live && d < D) ? to_f32<T>(vrow[d]) : 0.f;
        }
      }
#pragma unroll
      for (int u = 0; u < 8; ++u)
#pragma unroll
        for (int i = 0; i < NI; ++i) acc[i] += pw[u] * vv[u][i];
    }
  }

  const float inv = l > 0.f ? 1.f / l : 0.f;
  if (p.num_parts == 1) {
    float* o = p.out + (row * H + h) * D;
#pragma unroll
    for (int i = 0; i < NI; ++i)
      if (lane + 32 * i < D) o[lane + 32 * i] = acc[i] * inv;
  } else {
    const int64_t pi = (row * H + h) * p.num_parts + part;
    float* o = p.part_out + pi * D;
#pragma unroll
    for (int i = 0; i < NI; ++i)
      if (lane + 32 * i < D) o[lane + 32 * i] = acc[i] * inv;
    if (lane == 0) {
      p.part_max[pi] = m;
      p.part_sum[pi] = l;
    }
  }
}

// V = D / 32 consecutive elements of a row from one load per lane (the warp reads the row whole,
// coalesced), widened to float.
template <typename T, int V>
__device__ __forceinline__ void load_lane(const T* __restrict__ row, int lane, float* out) {
  const T* p = row + lane * V;
  if constexpr (sizeof(T) * V == 16) {
    const uint4 raw = __ldg(reinterpret_cast<const uint4*>(p));
    const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int i = 0; i < V; ++i) out[i] = to_f32<T>(e[i]);
  } else if constexpr (sizeof(T) * V == 8) {
    const uint2 raw = __ldg(reinterpret_cast<const uint2*>(p));
    const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int i = 0; i < V; ++i) out[i] = to_f32<T>(e[i]);
  } else {
#pragma unroll
    for (int i = 0; i < V; ++i) out[i] = to_f32<T>(p[i]);
  }
}

// Decode (one query per sequence), head_dim = 32 * V: a warp per (sequence, head, partition), the
// lanes splitting head_dim (lane l holds elements l*V .. l*V+V-1 of q, of each key and value row,
// and of the output), so every K/V row is one coalesced warp-wide load. Keys go G at a time: their
// slots, then their K rows, then their V rows are each loaded together (three memory round trips
// per G keys), scores reduced across the warp, folded into an online softmax.
template <typename T, int V>
__global__ void __launch_bounds__(kWarps * 32) decode_attention_kernel(Params p) {
  constexpr int G = 8;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t item = int64_t(blockIdx.x) * kWarps + warp;
  const int H = p.num_heads, D = p.head_dim, bs = p.block_size;
  if (item >= p.n_rows * H * p.num_parts) return;
  const int part = static_cast<int>(item % p.num_parts);
  const int h = static_cast<int>((item / p.num_parts) % H);
  const int s = static_cast<int>(item / (int64_t(p.num_parts) * H));
  const int pos = p.context_lens[s] - 1;
  const int kbeg = part * p.part_size, kend = min(kbeg + p.part_size, pos + 1);
  const int kvh = h / (H / p.kv_heads);
  const float slope = p.slopes ? p.slopes[h] : 0.f;
  const int32_t* table = p.block_tables + int64_t(s) * p.max_blocks;
  const T* kc = static_cast<const T*>(p.k) + int64_t(kvh) * D;
  const T* vc = static_cast<const T*>(p.v) + int64_t(kvh) * D;
  const int64_t slot_stride = int64_t(p.kv_heads) * D;

  float q[V], acc[V];
  const float* qrow = p.q + (int64_t(s) * H + h) * D + lane * V;
#pragma unroll
  for (int i = 0; i < V; ++i) q[i] = qrow[i], acc[i] = 0.f;
  float m = -INFINITY, l = 0.f;

  for (int k0 = kbeg; k0 < kend; k0 += G) {
    int64_t slot[G];
#pragma unroll
    for (int g = 0; g < G; ++g) {
      const int key = min(k0 + g, kend - 1);  // past the end: a repeat, masked below
      slot[g] = int64_t(table[key / bs]) * bs + key % bs;
    }
    float kr[G][V], sc[G];
#pragma unroll
    for (int g = 0; g < G; ++g) load_lane<T, V>(kc + slot[g] * slot_stride, lane, kr[g]);
#pragma unroll
    for (int g = 0; g < G; ++g) {
      float d = 0.f;
#pragma unroll
      for (int i = 0; i < V; ++i) d += q[i] * kr[g][i];
      sc[g] = d;
    }
#pragma unroll
    for (int g = 0; g < G; ++g) sc[g] = warp_sum(sc[g]);
    float cmax = -INFINITY;
#pragma unroll
    for (int g = 0; g < G; ++g) {
      const int key = k0 + g;
      float d = sc[g];
      if (p.k_scale) d *= p.k_scale[slot[g] * p.kv_heads + kvh];
      sc[g] = key < kend ? d * p.scale + slope * static_cast<float>(key - pos) : -INFINITY;
      cmax = fmaxf(cmax, sc[g]);
    }
    const float mnew = fmaxf(m, cmax);
    const float corr = m == -INFINITY ? 0.f : expf(m - mnew);
    float vr[G][V], pw[G], psum = 0.f;
#pragma unroll
    for (int g = 0; g < G; ++g) load_lane<T, V>(vc + slot[g] * slot_stride, lane, vr[g]);
#pragma unroll
    for (int g = 0; g < G; ++g) {
      const float pg = sc[g] == -INFINITY ? 0.f : expf(sc[g] - mnew);
      psum += pg;
      pw[g] = p.v_scale ? pg * p.v_scale[slot[g] * p.kv_heads + kvh] : pg;
    }
    l = l * corr + psum;
#pragma unroll
    for (int i = 0; i < V; ++i) {
      float a = acc[i] * corr;
#pragma unroll
      for (int g = 0; g < G; ++g) a += pw[g] * vr[g][i];
      acc[i] = a;
    }
    m = mnew;
  }

  const float inv = l > 0.f ? 1.f / l : 0.f;
  const int64_t pi = (int64_t(s) * H + h) * p.num_parts + part;
  float* o = p.num_parts == 1 ? p.out + (int64_t(s) * H + h) * D : p.part_out + pi * D;
#pragma unroll
  for (int i = 0; i < V; ++i) o[lane * V + i] = acc[i] * inv;
  if (p.num_parts > 1 && lane == 0) {
    p.part_max[pi] = m;
    p.part_sum[pi] = l;
  }
}

template <typename T>
bool launch_decode(cudaStream_t st, const Params& p) {
  const int64_t items = p.n_rows * p.num_heads * p.num_parts;
  const bool aligned = reinterpret_cast<uintptr_t>(p.k) % 16 == 0 && reinterpret_cast<uintptr_t>(p.v) % 16 == 0;
  if (p.head_dim % 32 || !aligned) return false;
  const unsigned grid = grid_1d(items, kWarps, "paged attention");
  switch (p.head_dim / 32) {
    case 1: decode_attention_kernel<T, 1><<<grid, kWarps * 32, 0, st>>>(p); break;
    case 2: decode_attention_kernel<T, 2><<<grid, kWarps * 32, 0, st>>>(p); break;
    case 4: decode_attention_kernel<T, 4><<<grid, kWarps * 32, 0, st>>>(p); break;
    case 8: decode_attention_kernel<T, 8><<<grid, kWarps * 32, 0, st>>>(p); break;
    default: return false;
  }
  check_launch("decode_attention_kernel");
  return true;
}

// Merges the partitions of one (row, head) per warp: only those that hold keys of the row (a CUDA
// graph's launch covers the longest context; a short one fills the first few), eight partial
// outputs loaded at a time.
__global__ void merge_partitions_kernel(Params p) {
  const int lane = threadIdx.x % 32;
  const int64_t item = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  if (item >= p.n_rows * p.num_heads) return;
  int s;
  const int pos = row_position(p, item / p.num_heads, s);
  const int P = p.num_parts, D = p.head_dim;
  const int live = max(1, min(P, (pos + p.part_size) / p.part_size));
  const float* pm = p.part_max + item * P;
  const float* ps = p.part_sum + item * P;
  float gmax = -INFINITY;
  for (int i = lane; i < live; i += 32) gmax = fmaxf(gmax, pm[i]);
  gmax = warp_max(gmax);
  float total = 0.f;
  for (int i = lane; i < live; i += 32) total += ps[i] > 0.f ? ps[i] * expf(pm[i] - gmax) : 0.f;
  total = warp_sum(total);
  const float inv = total > 0.f ? 1.f / total : 0.f;
  for (int d = lane; d < D; d += 32) {
    float o = 0.f;
    for (int i0 = 0; i0 < live; i0 += 8) {
      float w[8], v[8];
#pragma unroll
      for (int u = 0; u < 8; ++u) {
        const int i = i0 + u;
        const bool ok = i < live && ps[i] > 0.f;
        w[u] = ok ? ps[i] * expf(pm[i] - gmax) : 0.f;
        v[u] = ok ? p.part_out[(item * P + i) * D + d] : 0.f;
      }
#pragma unroll
      for (int u = 0; u < 8; ++u) o += w[u] * v[u];
    }
    p.out[item * D + d] = o * inv;
  }
}

template <typename T, int NI>
void launch_t(cudaStream_t st, const Params& p) {
  const int64_t items = p.n_rows * p.num_heads * p.num_parts;
  const unsigned grid = grid_1d(items, kWarps, "paged attention");
  const size_t shm = size_t(kWarps) * p.head_dim * sizeof(float);
  const bool vec = (size_t(p.head_dim) * sizeof(T)) % 16 == 0 && (reinterpret_cast<uintptr_t>(p.k) % 16) == 0;
  if (vec) attention_kernel<T, NI, true><<<grid, kWarps * 32, shm, st>>>(p);
  else attention_kernel<T, NI, false><<<grid, kWarps * 32, shm, st>>>(p);
  check_launch("attention_kernel");
}

template <typename T>
void launch_dtype(cudaStream_t st, const Params& p) {
  if (p.head_dim <= 32) launch_t<T, 1>(st, p);
  else if (p.head_dim <= 64) launch_t<T, 2>(st, p);
  else if (p.head_dim <= 128) launch_t<T, 4>(st, p);
  else launch_t<T, 8>(st, p);
}

// How the keys are cut: partitions only when (rows x heads) warps cannot fill the GPU and the
// context is long.
struct Plan {
  int max_ctx = 1, num_parts = 1, part_size = 1;
  int64_t workspace = 0;  // floats: per (row, head, part) an output row, a max and a sum
};

Plan plan(const AttnArgs& ah, int64_t n_rows, const KvCacheView& c) {
  Plan pl;
  for (int s = 0; s < ah.num_seqs; ++s) pl.max_ctx = std::max(pl.max_ctx, ah.context_lens[s]);
  const int64_t pairs = n_rows * ah.num_heads;
  // Aim at ~kTargetWarps warps in flight: few (row, head) pairs (decode of a small batch) get
  // partitions down to kMinPartition keys; partitions past a sequence's end exit at once.
  int64_t part = kPartition;
  if (pairs < kTargetWarps) {
    const int64_t want = (kTargetWarps + pairs - 1) / pairs;
    part = std::max<int64_t>(kMinPartition, ((pl.max_ctx + want - 1) / want + 31) / 32 * 32);
    part = std::min<int64_t>(part, kPartition);
  }
  pl.num_parts = (pl.max_ctx > part && pairs < kTargetWarps) ? static_cast<int>((pl.max_ctx + part - 1) / part) : 1;
  pl.part_size = pl.num_parts == 1 ? pl.max_ctx : static_cast<int>(part);
  if (pl.num_parts > 1) pl.workspace = pairs * pl.num_parts * (int64_t(c.head_dim) + 2);
  return pl;
}

}  // namespace

int64_t paged_attention_workspace(bool decode, const AttnArgs& ah, int64_t n_rows, const KvCacheView& c) {
  check_attention_args(ah, c, decode, n_rows);
  require_gpu_kv_dtype(c);
  if (n_rows == 0 || ah.num_seqs == 0) return 0;
  return plan(ah, n_rows, c).workspace;
}

void paged_attention(Launch l, bool decode, const AttnArgs& a, const AttnArgs& ah, int64_t n_rows,
                     const KvCacheView& c, float* workspace, int64_t workspace_size) {
  check_attention_args(ah, c, decode, n_rows);  // the CPU kernels' checks, on the host copies
  require_gpu_kv_dtype(c);
  if (c.head_dim > kMaxHeadDim)
    throw std::invalid_argument("CUDA paged attention supports head_dim <= " + std::to_string(kMaxHeadDim) +
                                ", got " + std::to_string(c.head_dim));
  DeviceScope scope(l.device, l.stream);
  cudaStream_t st = scope.stream();
  if (n_rows == 0 || a.num_seqs == 0) return;
  const Plan pl = plan(ah, n_rows, c);
  if (workspace_size < pl.workspace)
    throw std::invalid_argument("paged attention needs a workspace of " + std::to_string(pl.workspace) +
                                " floats, got " + std::to_string(workspace_size));

  Params p{};
  p.q = a.q, p.out = a.out, p.k = c.k, p.v = c.v;
  p.k_scale = c.dtype == KvDtype::I8 ? c.k_scale : nullptr;
  p.v_scale = c.dtype == KvDtype::I8 ? c.v_scale : nullptr;
  p.block_tables = a.block_tables, p.context_lens = a.context_lens;
  p.query_start_loc = decode ? nullptr : a.query_start_loc;
  p.slopes = a.slopes, p.scale = a.scale;
  p.num_seqs = a.num_seqs, p.num_heads = a.num_heads, p.kv_heads = c.kv_heads, p.head_dim = c.head_dim;
  p.block_size = c.block_size, p.max_blocks = a.max_blocks, p.n_rows = n_rows;
  p.num_parts = pl.num_parts;
  p.part_size = pl.part_size;
  const int64_t pairs = n_rows * a.num_heads;
  if (p.num_parts > 1) {
    const int64_t n = pairs * p.num_parts;
    p.part_out = workspace;
    p.part_max = p.part_out + n * c.head_dim;
    p.part_sum = p.part_max + n;
  }
  bool done = false;  // decode with head_dim a multiple of 32 (every MPT): the lane-split kernel
  if (decode) {
    switch (c.dtype) {
      case KvDtype::F32: done = launch_decode<float>(st, p); break;
      case KvDtype::BF16: done = launch_decode<__nv_bfloat16>(st, p); break;
      case KvDtype::F16: done = launch_decode<__half>(st, p); break;
      case KvDtype::I8: done = launch_decode<int8_t>(st, p); break;
      case KvDtype::Q4: break;  // refused above (require_gpu_kv_dtype)
    }
  }
  if (!done) {
    switch (c.dtype) {
      case KvDtype::F32: launch_dtype<float>(st, p); break;
      case KvDtype::BF16: launch_dtype<__nv_bfloat16>(st, p); break;
      case KvDtype::F16: launch_dtype<__half>(st, p); break;
      case KvDtype::I8: launch_dtype<int8_t>(st, p); break;
      case KvDtype::Q4: break;  // refused above (require_gpu_kv_dtype)
    }
  }
  if (p.num_parts > 1) {
    merge_partitions_kernel<<<grid_1d(pairs * 32, 128, "merge partitions"), 128, 0, st>>>(p);
    check_launch("merge_partitions_kernel");
  }
}

}  // namespace mpt::cuda
