#include "runtime/step.h"

#include <algorithm>

namespace cartserve {

void StepInput::clear() {
  token_ids.clear();
  positions.clear();
  slot_mapping.clear();
  query_start.clear();
  context_lens.clear();
  block_table.clear();
  max_blocks = 0;
  max_query_len = 0;
  max_context_len = 0;
  samples.clear();
  prompt_logprobs.clear();
  block_copies.clear();
}

int32_t StepInput::append_sequence(std::span<const int32_t> table, int32_t block_size,
                                   int32_t start, std::span<const int32_t> tokens) {
  const auto n = static_cast<int32_t>(tokens.size());
  const int32_t kv_len = start + n;
  const int32_t first_row = num_tokens();
  if (query_start.empty()) query_start.push_back(0);
  const size_t used = static_cast<size_t>((kv_len + block_size - 1) / block_size);
  block_table.insert(block_table.end(), table.begin(),
                     table.begin() + static_cast<ptrdiff_t>(used));
  block_table.resize(block_table.size() + static_cast<size_t>(max_blocks) - used, 0);
  for (int32_t i = 0; i < n; ++i) {
    const int32_t pos = start + i;
    token_ids.push_back(tokens[static_cast<size_t>(i)]);
    positions.push_back(pos);
    slot_mapping.push_back(table[static_cast<size_t>(pos / block_size)] * block_size +
                           pos % block_size);
  }
  query_start.push_back(first_row + n);
  context_lens.push_back(kv_len);
  max_query_len = std::max(max_query_len, n);
  max_context_len = std::max(max_context_len, kv_len);
  return first_row;
}

}  // namespace cartserve
