#include "runtime/cascade_plan.h"

#include <algorithm>
#include <numeric>

#include "kernels/cascade_split.h"

namespace cartserve {

void plan_cascade(std::span<const int32_t> shared_prefix, std::span<const int32_t> query_start,
                  std::span<const int32_t> context_lens, std::span<const int32_t> block_table,
                  int32_t max_blocks, int32_t block_size, int32_t gqa_group, int32_t min_prefix,
                  CascadePlan& plan) {
  const auto n = static_cast<int32_t>(context_lens.size());
  plan.prefix_len.assign(static_cast<size_t>(n), 0);
  plan.members.clear();
  plan.items.clear();
  if (min_prefix <= 0 || shared_prefix.size() != context_lens.size() ||
      query_start.size() != context_lens.size() + 1 || block_size <= 0 || gqa_group <= 0 ||
      gqa_group > ops::kCascadeTileRows)
    return;
  // Prefix of each sequence: whole blocks before its query row (position ctx - 1).
  std::vector<int32_t> cand;
  for (int32_t s = 0; s < n; ++s) {
    const auto i = static_cast<size_t>(s);
    if (query_start[i + 1] - query_start[i] != 1) continue;  // not a decode row
    const int32_t ctx = context_lens[static_cast<size_t>(s)];
    int32_t p =
        std::min(shared_prefix[static_cast<size_t>(s)], std::min(ctx - 1, max_blocks * block_size));
    p = p / block_size * block_size;
    if (p < min_prefix) continue;
    plan.prefix_len[static_cast<size_t>(s)] = p;
    cand.push_back(s);
  }
  // Groups: equal prefix length and block ids over it, members in sequence order.
  auto ids = [&](int32_t s) {
    const auto row = block_table.subspan(static_cast<size_t>(s) * static_cast<size_t>(max_blocks),
                                         static_cast<size_t>(max_blocks));
    return row.first(static_cast<size_t>(plan.prefix_len[static_cast<size_t>(s)] / block_size));
  };
  auto less = [&](int32_t a, int32_t b) {
    const auto ia = ids(a), ib = ids(b);
    if (ia.size() != ib.size()) return ia.size() < ib.size();
    return std::lexicographical_compare(ia.begin(), ia.end(), ib.begin(), ib.end());
  };
  std::stable_sort(cand.begin(), cand.end(), less);
  plan.members = cand;
  const int32_t per_tile = ops::kCascadeTileRows / gqa_group;
  for (size_t g = 0; g < cand.size();) {
    size_t end = g + 1;
    while (end < cand.size() && !less(cand[g], cand[end]))
      ++end;  // sorted: not less means equal
    const int32_t prefix = plan.prefix_len[static_cast<size_t>(cand[g])];
    const int32_t splits = ops::cascade_num_splits(prefix);
    for (size_t t = g; t < end; t += static_cast<size_t>(per_tile)) {
      const auto count = static_cast<int32_t>(std::min(end - t, static_cast<size_t>(per_tile)));
      for (int32_t z = 0; z < splits; ++z) {
        plan.items.insert(plan.items.end(), {static_cast<int32_t>(t), count, z, prefix});
      }
    }
    g = end;
  }
}

}  // namespace cartserve
