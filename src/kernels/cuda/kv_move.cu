// KV movement between the block-major bf16 pool and the file layout of a
// cartridge ([num_kv_heads, total_tokens, head_dim] of fp32/fp16/bf16), and
// block-prefix copies inside the pool (copy-on-write of partial blocks).
//
// Design:
//  - kv_import / kv_export: a flat grid-stride loop over the
//    num_kv_heads * count * head_dim elements of the range, in file order
//    (head-major, then position, then dim), so reads and writes are both
//    contiguous along head_dim. A step moves 8 elements (16-byte bf16/fp16
//    accesses, two float4 for fp32) when head_dim % 8 == 0 and the pointers
//    and block stride allow it, else 1. Conversions: bf16 -> bf16 is a bit
//    copy; fp16/fp32 -> bf16 and bf16 -> fp16 round to nearest even (fp16
//    overflow -> inf); bf16 -> fp32 is exact. Position p of the file lives
//    at block blocks[p / block_size], offset p % block_size.
//  - copy_block_prefixes: grid (n, num_layers * 2), one CTA per (pair,
//    layer, K/V) copying the first num_slots[i] slots of that part of block
//    src[i] to block dst[i]: one contiguous run of num_slots[i] * kv_dim
//    elements per CTA, as 16-byte words when kv_dim % 8 == 0.
// Pointers (src, dst, blocks, num_slots, ...) must be readable from the
// device: device memory, or pinned host memory mapped into the device's
// address space. Grids come from host-known sizes; no allocation, no sync.
#include <type_traits>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda_ops.h"

namespace cartserve::ops::cuda {

namespace {

constexpr int kThreads = 256;

// VEC elements from s to d, converting S -> D.
template <typename S, typename D, int VEC>
__device__ __forceinline__ void move_elems(const S* __restrict__ s, D* __restrict__ d) {
  if constexpr (std::is_same_v<S, D>) {
    if constexpr (VEC == 8) {
      constexpr int kWords = 8 * static_cast<int>(sizeof(S)) / 16;  // 16-byte words
#pragma unroll
      for (int w = 0; w < kWords; ++w)
        reinterpret_cast<uint4*>(d)[w] = reinterpret_cast<const uint4*>(s)[w];
    } else {
      *d = *s;  // a bit copy (NaN payloads kept)
    }
  } else if constexpr (VEC == 8) {
    float f[8];
    load_x8(s, f);
    store_x8(d, f);
  } else {
    *d = from_f32<D>(to_f32(*s));
  }
}

// One import/export: the range [first, first + count) of a file of
// total_tokens positions, and the pool layer's layout.
struct KvGeom {
  int total_tokens, first, count;
  int64_t block_stride;
  int block_size, n_kv, hd;
};

// Chunk `chunk` (VEC elements, in file order: head, then position, then
// dim) of the range: its offsets in the file and in the pool layer.
template <int VEC>
__device__ __forceinline__ void kv_offsets(const KvGeom& g, const int32_t* __restrict__ blocks,
                                           int64_t chunk, int64_t& file_off, int64_t& pool_off) {
  const int per_row = g.hd / VEC;
  const int64_t r = chunk / per_row;  // h * count + (p - first)
  const int d0 = static_cast<int>(chunk - r * per_row) * VEC;
  const int h = static_cast<int>(r / g.count);
  const int p = g.first + static_cast<int>(r - static_cast<int64_t>(h) * g.count);
  file_off = (static_cast<int64_t>(h) * g.total_tokens + p) * g.hd + d0;
  pool_off = static_cast<int64_t>(blocks[p / g.block_size]) * g.block_stride +
             static_cast<int64_t>(p % g.block_size) * g.n_kv * g.hd +
             static_cast<int64_t>(h) * g.hd + d0;
}

template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads)
    kv_import_kernel(const T* __restrict__ src /* [n_kv, total_tokens, hd] */, KvGeom g,
                     const int32_t* __restrict__ blocks, bf16* __restrict__ dst /* layer base */) {
  const int64_t total = static_cast<int64_t>(g.n_kv) * g.count * (g.hd / VEC);
  for (int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; c < total;
       c += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t fo, po;
    kv_offsets<VEC>(g, blocks, c, fo, po);
    move_elems<T, bf16, VEC>(src + fo, dst + po);
  }
}

template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads)
    kv_export_kernel(const bf16* __restrict__ src /* layer base */, KvGeom g,
                     const int32_t* __restrict__ blocks,
                     T* __restrict__ dst /* [n_kv, total_tokens, hd] */) {
  const int64_t total = static_cast<int64_t>(g.n_kv) * g.count * (g.hd / VEC);
  for (int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; c < total;
       c += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t fo, po;
    kv_offsets<VEC>(g, blocks, c, fo, po);
    move_elems<bf16, T, VEC>(src + po, dst + fo);
  }
}

// Validates the range and the layout; returns the geometry.
KvGeom make_geom(const char* op, const KvLayer& layout, int total_tokens, int first, int count) {
  if (layout.block_size <= 0 || layout.num_kv_heads <= 0 || layout.head_dim <= 0 ||
      layout.block_stride <= 0)
    op_fail(op, "bad KV layout");
  if (first < 0 || count < 0 || static_cast<int64_t>(first) + count > total_tokens)
    op_fail(op, "range [first, first + count) outside [0, total_tokens)");
  KvGeom g;
  g.total_tokens = total_tokens;
  g.first = first;
  g.count = count;
  g.block_stride = layout.block_stride;
  g.block_size = layout.block_size;
  g.n_kv = layout.num_kv_heads;
  g.hd = layout.head_dim;
  return g;
}

template <typename T>
void import_typed(const T* src, const KvGeom& g, const int32_t* blocks, bf16* dst, cudaStream_t s) {
  const bool vec = g.hd % 8 == 0 && g.block_stride % 8 == 0 && aligned16(src) && aligned16(dst);
  const long long work = static_cast<long long>(g.n_kv) * g.count * (vec ? g.hd / 8 : g.hd);
  const unsigned grid = grid_for(work, kThreads);
  if (vec) {
    kv_import_kernel<T, 8><<<grid, kThreads, 0, s>>>(src, g, blocks, dst);
  } else {
    kv_import_kernel<T, 1><<<grid, kThreads, 0, s>>>(src, g, blocks, dst);
  }
}

template <typename T>
void export_typed(const bf16* src, const KvGeom& g, const int32_t* blocks, T* dst, cudaStream_t s) {
  const bool vec = g.hd % 8 == 0 && g.block_stride % 8 == 0 && aligned16(src) && aligned16(dst);
  const long long work = static_cast<long long>(g.n_kv) * g.count * (vec ? g.hd / 8 : g.hd);
  const unsigned grid = grid_for(work, kThreads);
  if (vec) {
    kv_export_kernel<T, 8><<<grid, kThreads, 0, s>>>(src, g, blocks, dst);
  } else {
    kv_export_kernel<T, 1><<<grid, kThreads, 0, s>>>(src, g, blocks, dst);
  }
}

template <int VEC>
__global__ void __launch_bounds__(kThreads)
    copy_block_prefixes_kernel(bf16* pool, const int32_t* __restrict__ src,
                               const int32_t* __restrict__ dst,
                               const int32_t* __restrict__ num_slots, int block_size, int kv_dim,
                               int64_t block_elems) {
  const int i = blockIdx.x;
  const int part = blockIdx.y;  // layer * 2 + (0: K, 1: V)
  // Clamped to the block: a bad count must not spill into the next part.
  const int ns = min(max(num_slots[i], 0), block_size);
  const int64_t part_off = static_cast<int64_t>(part) * block_size * kv_dim;
  const bf16* s = pool + static_cast<int64_t>(src[i]) * block_elems + part_off;
  bf16* d = pool + static_cast<int64_t>(dst[i]) * block_elems + part_off;
  const int64_t elems = static_cast<int64_t>(ns) * kv_dim;
  if constexpr (VEC == 8) {
    const uint4* s4 = reinterpret_cast<const uint4*>(s);
    uint4* d4 = reinterpret_cast<uint4*>(d);
    for (int64_t c = threadIdx.x; c < elems / 8; c += blockDim.x)
      d4[c] = s4[c];
  } else {
    const uint16_t* s2 = reinterpret_cast<const uint16_t*>(s);
    uint16_t* d2 = reinterpret_cast<uint16_t*>(d);
    for (int64_t c = threadIdx.x; c < elems; c += blockDim.x)
      d2[c] = s2[c];
  }
}

}  // namespace

void kv_import(const void* src, KvElem elem, int total_tokens, int first, int count,
               const int32_t* blocks, bf16* dst, const KvLayer& layout, cudaStream_t s) {
  const KvGeom g = make_geom("kv_import", layout, total_tokens, first, count);
  if (count == 0) return;
  switch (elem) {
    case KvElem::kF32:
      import_typed(static_cast<const float*>(src), g, blocks, dst, s);
      break;
    case KvElem::kF16:
      import_typed(static_cast<const __half*>(src), g, blocks, dst, s);
      break;
    case KvElem::kBF16:
      import_typed(static_cast<const bf16*>(src), g, blocks, dst, s);
      break;
    default:
      op_fail("kv_import", "unknown element type");
  }
  check_launch("kv_import");
}

void kv_export(const bf16* src, const KvLayer& layout, const int32_t* blocks, int total_tokens,
               int first, int count, void* dst, KvElem elem, cudaStream_t s) {
  const KvGeom g = make_geom("kv_export", layout, total_tokens, first, count);
  if (count == 0) return;
  switch (elem) {
    case KvElem::kF32:
      export_typed(src, g, blocks, static_cast<float*>(dst), s);
      break;
    case KvElem::kF16:
      export_typed(src, g, blocks, static_cast<__half*>(dst), s);
      break;
    case KvElem::kBF16:
      export_typed(src, g, blocks, static_cast<bf16*>(dst), s);
      break;
    default:
      op_fail("kv_export", "unknown element type");
  }
  check_launch("kv_export");
}

void copy_block_prefixes(bf16* pool, const int32_t* src, const int32_t* dst,
                         const int32_t* num_slots, int n, int num_layers, int block_size,
                         int kv_dim, cudaStream_t s) {
  if (n <= 0) return;
  if (num_layers <= 0 || num_layers * 2 > 65535 || block_size <= 0 || kv_dim <= 0)
    op_fail("copy_block_prefixes", "bad pool layout");
  const int64_t block_elems = static_cast<int64_t>(num_layers) * 2 * block_size * kv_dim;
  const dim3 grid(static_cast<unsigned>(n), static_cast<unsigned>(num_layers * 2));
  if (kv_dim % 8 == 0 && aligned16(pool)) {
    copy_block_prefixes_kernel<8>
        <<<grid, kThreads, 0, s>>>(pool, src, dst, num_slots, block_size, kv_dim, block_elems);
  } else {
    copy_block_prefixes_kernel<1>
        <<<grid, kThreads, 0, s>>>(pool, src, dst, num_slots, block_size, kv_dim, block_elems);
  }
  check_launch("copy_block_prefixes");
}

}  // namespace cartserve::ops::cuda
