#include "runtime/cpu/tp_plan.h"

#include <algorithm>

#include <fmt/format.h>

namespace cartserve {

namespace {

// floor(i * n / parts) without overflow for our sizes.
int32_t split_point(int32_t i, int32_t n, int32_t parts) {
  return static_cast<int32_t>(static_cast<int64_t>(i) * n / parts);
}

}  // namespace

int32_t TpPlan::kv_head_owner(int32_t h) const {
  for (int32_t r = 0; r < size; ++r) {
    const TpRank& k = ranks[static_cast<size_t>(r)];
    if (h >= k.kv_head_begin && h < k.kv_head_end) return r;
  }
  return -1;
}

int32_t TpPlan::max_kv_heads_per_rank() const {
  int32_t m = 0;
  for (const TpRank& r : ranks)
    m = std::max(m, r.num_kv_heads());
  return m;
}

std::string TpPlan::describe() const {
  std::string s = fmt::format("TP={} over {} q / {} KV heads, intermediate {}", size, num_heads,
                              num_kv_heads, intermediate);
  if (kv_replicated) {
    s += ": fewer KV heads than ranks, KV heads replicated";
  }
  s += " (";
  for (int32_t r = 0; r < size; ++r) {
    const TpRank& k = ranks[static_cast<size_t>(r)];
    s +=
        fmt::format("{}rank {}: q {}-{}, kv {}-{}, ff {}-{}", r ? "; " : "", r, k.q_head_begin,
                    k.q_head_end - 1, k.kv_head_begin, k.kv_head_end - 1, k.ff_begin, k.ff_end - 1);
  }
  return s + ")";
}

Result<TpPlan> make_tp_plan(int32_t num_heads, int32_t num_kv_heads, int32_t intermediate,
                            int32_t size, int32_t ff_align) {
  if (size != 1 && size != 2 && size != 4 && size != 8) {
    return make_error(ErrorCode::kInvalidArgument, "tensor parallel size {} must be 1, 2, 4 or 8",
                      size);
  }
  if (num_heads <= 0 || num_kv_heads <= 0 || num_heads % num_kv_heads != 0 || intermediate <= 0) {
    return make_error(ErrorCode::kInvalidArgument,
                      "tensor parallel: {} q heads do not group over {} KV heads", num_heads,
                      num_kv_heads);
  }
  if (size > num_heads || size > intermediate) {
    return make_error(ErrorCode::kInvalidArgument,
                      "tensor parallel size {} exceeds the model's {} attention heads or its "
                      "intermediate size {}",
                      size, num_heads, intermediate);
  }
  TpPlan p;
  p.size = size;
  p.num_heads = num_heads;
  p.num_kv_heads = num_kv_heads;
  p.intermediate = intermediate;
  p.kv_replicated = size > num_kv_heads;
  p.ranks.resize(static_cast<size_t>(size));
  const int32_t g = num_heads / num_kv_heads;  // q heads per KV head
  for (int32_t r = 0; r < size; ++r) {
    TpRank& k = p.ranks[static_cast<size_t>(r)];
    if (!p.kv_replicated) {
      k.kv_head_begin = split_point(r, num_kv_heads, size);
      k.kv_head_end = split_point(r + 1, num_kv_heads, size);
      k.q_head_begin = k.kv_head_begin * g;
      k.q_head_end = k.kv_head_end * g;
    } else {
      const int32_t h = split_point(r, num_kv_heads, size);
      k.kv_head_begin = h;
      k.kv_head_end = h + 1;
      // The ranks sharing head h are contiguous: [first, first + m).
      int32_t first = r, m = 0;
      while (first > 0 && split_point(first - 1, num_kv_heads, size) == h)
        --first;
      while (first + m < size && split_point(first + m, num_kv_heads, size) == h)
        ++m;
      const int32_t i = r - first;
      if (m > g) {
        return make_error(ErrorCode::kInvalidArgument,
                          "tensor parallel size {}: {} ranks would share KV head {} of {} q heads",
                          size, m, h, g);
      }
      k.q_head_begin = h * g + split_point(i, g, m);
      k.q_head_end = h * g + split_point(i + 1, g, m);
    }
    // MLP slice: on ff_align boundaries when the alignment divides the size
    // into at least N blocks; else element boundaries (a quantized down_proj
    // slice is then dequantized, tp_shard.h).
    int32_t a = (ff_align > 1 && intermediate % ff_align == 0) ? ff_align : 1;
    if (intermediate / a < size) a = 1;
    const int32_t units = intermediate / a;
    k.ff_begin = split_point(r, units, size) * a;
    k.ff_end = split_point(r + 1, units, size) * a;
  }
  return p;
}

}  // namespace cartserve
