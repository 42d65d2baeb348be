// KV movement between a cartridge's file layout [num_kv_heads, total_tokens,
// head_dim] (fp32, fp16 or bf16) and one layer of an fp32 paged pool with an
// arbitrary block stride: the CPU backend's cartridge promotion and export,
// and the fp32 twins of ops::cuda::kv_import / kv_export.
//
// The unit of work is one (head, position) row of head_dim elements: both
// sides hold it contiguously, so a row is one memcpy when the file is fp32
// and one conversion loop (core/dtype.h, round to nearest even) otherwise.
// Rows are independent and split over the thread pool in large chunks.
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "core/thread_pool.h"
#include "kernels/ops.h"

namespace cartserve::ops::cpu {

namespace {

// Rows smaller than this many elements per task are not worth a thread.
constexpr size_t kMinElemsPerTask = 1 << 16;

void check_args(const char* op, DType elem, int total_tokens, int first, int count, int block_size,
                int num_kv_heads, int head_dim) {
  const char* why = nullptr;
  if (elem != DType::kF32 && elem != DType::kF16 && elem != DType::kBF16) {
    why = "element type must be float32, float16 or bfloat16";
  } else if (block_size <= 0 || num_kv_heads <= 0 || head_dim <= 0) {
    why = "bad KV layout";
  } else if (first < 0 || count < 0 || static_cast<int64_t>(first) + count > total_tokens) {
    why = "range [first, first + count) outside [0, total_tokens)";
  }
  if (why != nullptr) {
    std::fprintf(stderr, "cartserve::ops::cpu::%s: %s\n", op, why);
    std::abort();
  }
}

// Calls fn(file_row_offset, pool_row_offset) (elements) for every
// (head, position) row of the range, in parallel.
template <typename Fn>
void for_each_row(int total_tokens, int first, int count, const int32_t* blocks,
                  int64_t block_stride, int block_size, int num_kv_heads, int head_dim,
                  const Fn& fn) {
  const size_t rows = static_cast<size_t>(num_kv_heads) * static_cast<size_t>(count);
  const size_t min_rows = kMinElemsPerTask / static_cast<size_t>(head_dim) + 1;
  const int64_t kv_dim = static_cast<int64_t>(num_kv_heads) * head_dim;
  ThreadPool::global().parallel_for(
      rows,
      [&](size_t b, size_t e) {
        for (size_t r = b; r < e; ++r) {
          const int h = static_cast<int>(r / static_cast<size_t>(count));
          const int p = first + static_cast<int>(r % static_cast<size_t>(count));
          const int64_t file_off = (static_cast<int64_t>(h) * total_tokens + p) * head_dim;
          const int64_t pool_off = static_cast<int64_t>(blocks[p / block_size]) * block_stride +
                                   static_cast<int64_t>(p % block_size) * kv_dim +
                                   static_cast<int64_t>(h) * head_dim;
          fn(file_off, pool_off);
        }
      },
      min_rows);
}

}  // namespace

void kv_import(const void* src, DType elem, int total_tokens, int first, int count,
               const int32_t* blocks, float* dst, int64_t block_stride, int block_size,
               int num_kv_heads, int head_dim) {
  check_args("kv_import", elem, total_tokens, first, count, block_size, num_kv_heads, head_dim);
  if (count == 0) return;
  const auto* bytes = static_cast<const uint8_t*>(src);
  const size_t esize = dtype_size(elem);
  const size_t hd = static_cast<size_t>(head_dim);
  for_each_row(total_tokens, first, count, blocks, block_stride, block_size, num_kv_heads, head_dim,
               [&](int64_t file_off, int64_t pool_off) {
                 const uint8_t* s = bytes + static_cast<size_t>(file_off) * esize;
                 float* d = dst + pool_off;
                 if (elem == DType::kF32) {
                   std::memcpy(d, s, hd * sizeof(float));
                 } else {
                   convert_to_f32(elem, s, d, hd);
                 }
               });
}

void kv_export(const float* src, int64_t block_stride, int block_size, int num_kv_heads,
               int head_dim, const int32_t* blocks, int total_tokens, int first, int count,
               void* dst, DType elem) {
  check_args("kv_export", elem, total_tokens, first, count, block_size, num_kv_heads, head_dim);
  if (count == 0) return;
  auto* bytes = static_cast<uint8_t*>(dst);
  const size_t esize = dtype_size(elem);
  const size_t hd = static_cast<size_t>(head_dim);
  for_each_row(total_tokens, first, count, blocks, block_stride, block_size, num_kv_heads, head_dim,
               [&](int64_t file_off, int64_t pool_off) {
                 uint8_t* d = bytes + static_cast<size_t>(file_off) * esize;
                 const float* s = src + pool_off;
                 if (elem == DType::kF32) {
                   std::memcpy(d, s, hd * sizeof(float));
                 } else {
                   convert_from_f32(s, elem, d, hd);
                 }
               });
}

}  // namespace cartserve::ops::cpu
