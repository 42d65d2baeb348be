#include "runtime/cascade_plan.h"

#include <algorithm>
#include <unordered_map>

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
  // Groups: equal prefix length and block ids over it, in the order of their
  // first members, members in sequence order. Found by a hash of the ids,
  // confirmed against the group's first member.
  auto ids = [&](int32_t s) {
    const auto row = block_table.subspan(static_cast<size_t>(s) * static_cast<size_t>(max_blocks),
                                         static_cast<size_t>(max_blocks));
    return row.first(static_cast<size_t>(plan.prefix_len[static_cast<size_t>(s)] / block_size));
  };
  std::vector<std::vector<int32_t>> groups;
  std::unordered_map<uint64_t, std::vector<size_t>> by_hash;  // -> indices into groups
  for (int32_t s : cand) {
    const auto mine = ids(s);
    uint64_t h = 1469598103934665603ull ^ mine.size();  // FNV-1a over the ids
    for (int32_t id : mine)
      h = (h ^ static_cast<uint32_t>(id)) * 1099511628211ull;
    std::vector<size_t>& same = by_hash[h];
    auto it = std::find_if(same.begin(), same.end(), [&](size_t g) {
      const auto head = ids(groups[g].front());
      return std::equal(head.begin(), head.end(), mine.begin(), mine.end());
    });
    if (it == same.end()) {
      same.push_back(groups.size());
      groups.push_back({s});
    } else {
      groups[*it].push_back(s);
    }
  }
  const int32_t per_tile = ops::kCascadeTileRows / gqa_group;
  for (const std::vector<int32_t>& g : groups) {
    const auto first = static_cast<int32_t>(plan.members.size());
    plan.members.insert(plan.members.end(), g.begin(), g.end());
    const int32_t prefix = plan.prefix_len[static_cast<size_t>(g.front())];
    const int32_t splits = ops::cascade_num_splits(prefix);
    const auto n = static_cast<int32_t>(g.size());
    for (int32_t t = 0; t < n; t += per_tile) {
      const int32_t count = std::min(n - t, per_tile);
      for (int32_t z = 0; z < splits; ++z)
        plan.items.insert(plan.items.end(), {first + t, count, z, prefix});
    }
  }
}

}  // namespace cartserve
