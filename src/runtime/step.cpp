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
  prompt_rows.clear();
  shared_prefix.clear();
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

void logit_rows(const StepInput& in, bool prompt_rows, std::vector<int32_t>& rows) {
  rows.clear();
  for (const SampleRow& s : in.samples)
    rows.push_back(s.row);
  if (!prompt_rows) return;
  for (const PromptLogprobRows& p : in.prompt_logprobs) {
    for (size_t i = 0; i < p.targets.size(); ++i)
      rows.push_back(p.first_row + static_cast<int32_t>(i));
  }
}

Status validate_step(const StepInput& in, std::span<const int32_t> logit_rows, int32_t vocab,
                     int32_t num_blocks, int32_t block_size) {
  if (!in.prompt_rows.empty() && in.prompt_rows.size() != in.context_lens.size()) {
    return make_error(ErrorCode::kInvalidArgument, "forward: {} prompt_rows flags for {} sequences",
                      in.prompt_rows.size(), in.context_lens.size());
  }
  if (!in.shared_prefix.empty() && in.shared_prefix.size() != in.context_lens.size()) {
    return make_error(ErrorCode::kInvalidArgument,
                      "forward: {} shared_prefix lengths for {} sequences", in.shared_prefix.size(),
                      in.context_lens.size());
  }
  const int32_t n = in.num_tokens();
  const int32_t num_seqs = in.num_seqs();
  if (in.positions.size() != in.token_ids.size() || in.slot_mapping.size() != in.token_ids.size()) {
    return make_error(ErrorCode::kInvalidArgument,
                      "forward: {} tokens but {} positions and {} slots", n, in.positions.size(),
                      in.slot_mapping.size());
  }
  if (in.query_start.size() != static_cast<size_t>(num_seqs) + 1 || in.query_start[0] != 0 ||
      in.query_start.back() != n) {
    return make_error(ErrorCode::kInvalidArgument,
                      "forward: query_start must run from 0 to the {} rows over {} sequences", n,
                      num_seqs);
  }
  if (in.max_blocks < 0 ||
      in.block_table.size() != static_cast<size_t>(num_seqs) * static_cast<size_t>(in.max_blocks)) {
    return make_error(ErrorCode::kInvalidArgument,
                      "forward: block table of {} entries for {} sequences of {} blocks",
                      in.block_table.size(), num_seqs, in.max_blocks);
  }
  const int64_t num_slots = static_cast<int64_t>(num_blocks) * block_size;
  for (int32_t i = 0; i < n; ++i) {
    if (in.token_ids[i] < 0 || in.token_ids[i] >= vocab) {
      return make_error(ErrorCode::kInvalidArgument, "forward: token id {} outside [0, {})",
                        in.token_ids[i], vocab);
    }
    if (in.slot_mapping[i] < 0 || in.slot_mapping[i] >= num_slots) {
      return make_error(ErrorCode::kInvalidArgument, "forward: slot {} outside the cache ({})",
                        in.slot_mapping[i], num_slots);
    }
  }
  for (int32_t s = 0; s < num_seqs; ++s) {
    const int32_t q_len = in.query_start[s + 1] - in.query_start[s];
    const int32_t kv_len = in.context_lens[s];
    if (q_len <= 0 || kv_len < q_len) {
      return make_error(ErrorCode::kInvalidArgument,
                        "forward: sequence {} has {} rows and {} positions", s, q_len, kv_len);
    }
    const int64_t need = (kv_len + block_size - 1) / block_size;
    if (need > in.max_blocks) {
      return make_error(ErrorCode::kInvalidArgument,
                        "forward: block table holds {} blocks but kv_len is {}", in.max_blocks,
                        kv_len);
    }
    if (!in.shared_prefix.empty()) {
      const int32_t p = in.shared_prefix[static_cast<size_t>(s)];
      if (p < 0 || p % block_size != 0 || p > kv_len - q_len) {
        return make_error(ErrorCode::kInvalidArgument,
                          "forward: sequence {} has a shared prefix of {} positions (whole blocks "
                          "of {} before its {} rows of {} positions)",
                          s, p, block_size, q_len, kv_len);
      }
    }
    const int32_t* table = in.block_table.data() + static_cast<size_t>(s) * in.max_blocks;
    for (int64_t b = 0; b < need; ++b) {
      if (table[b] < 0 || table[b] >= num_blocks) {
        return make_error(ErrorCode::kInvalidArgument, "forward: block id {} outside the cache",
                          table[b]);
      }
    }
  }
  for (int32_t r : logit_rows) {
    if (r < 0 || r >= n) {
      return make_error(ErrorCode::kInvalidArgument, "forward: logit row {} outside the batch", r);
    }
  }
  return {};
}

}  // namespace cartserve
