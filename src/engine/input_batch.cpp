#include "engine/input_batch.h"

#include <algorithm>

namespace cartserve {

const std::vector<int32_t>& InputBatch::row(const std::string& request_id) const {
  static const std::vector<int32_t> kNone;
  const auto it = rows_.find(request_id);
  return it == rows_.end() ? kNone : it->second;
}

Status InputBatch::build(const SchedulerOutput& out, const RequestLookup& find, StepInput& in,
                         StepPlan& plan) {
  for (const auto& id : out.finished_ids)
    rows_.erase(id);
  for (const auto& id : out.preempted_ids)
    rows_.erase(id);
  in.clear();
  plan.sample_entry.clear();
  plan.prompt_rows.clear();
  const int32_t B = block_size_;

  // Rows first: the padded table's width is the longest row of this step.
  std::vector<const std::vector<int32_t>*> tables;
  tables.reserve(out.scheduled.size());
  for (const ScheduledRequest& s : out.scheduled) {
    std::vector<int32_t>& r = rows_[s.request_id];
    if (s.new_row) r.clear();
    r.insert(r.end(), s.new_block_ids.begin(), s.new_block_ids.end());
    const int32_t kv_len = s.start_position + s.num_tokens;
    if (static_cast<int64_t>(r.size()) * B < kv_len) {
      return make_error(ErrorCode::kInternal,
                        "request '{}': {} blocks in its row for {} positions (a missed delta)",
                        s.request_id, r.size(), kv_len);
    }
    in.max_blocks = std::max(in.max_blocks, (kv_len + B - 1) / B);
    tables.push_back(&r);
  }

  for (size_t e = 0; e < out.scheduled.size(); ++e) {
    const ScheduledRequest& s = out.scheduled[e];
    const int32_t first_row = in.append_sequence(*tables[e], B, s.start_position, s.token_ids);
    const int32_t kv_len = s.start_position + s.num_tokens;
    const int32_t row = first_row + s.num_tokens;
    const Request* req = find ? find(s.request_id) : nullptr;
    if (!req) {
      return make_error(ErrorCode::kInternal, "scheduled request '{}' is unknown", s.request_id);
    }
    // Prompt tokens (and a preempted request's recomputed ones) vs generated ones.
    in.prompt_rows.push_back(s.num_tokens > 1 ||
                             s.start_position < req->num_virtual_tokens + req->num_prompt_tokens());
    // Shared full blocks, up to the first row of this chunk.
    in.shared_prefix.push_back(std::min(s.shared_blocks * B, s.start_position / B * B));
    // Prompt logprobs: positions p in [v, v + P - 1) of this chunk predict prompt token p + 1.
    if (req->sampling.prompt_logprobs >= 0) {
      const int32_t v = req->num_virtual_tokens;
      const int32_t lo = std::max(s.start_position, v);
      const int32_t hi = std::min(kv_len, v + req->num_prompt_tokens() - 1);
      if (hi > lo) {
        PromptLogprobRows p;
        p.first_row = first_row + (lo - s.start_position);
        p.targets = std::span<const int32_t>(req->prompt_token_ids)
                        .subspan(static_cast<size_t>(lo - v + 1), static_cast<size_t>(hi - lo));
        p.top_n = req->sampling.prompt_logprobs;
        in.prompt_logprobs.push_back(p);
        plan.prompt_rows.push_back({e, lo});
      }
    }
    if (s.needs_logits) {
      SampleRow r;
      r.row = row - 1;
      r.params = &req->sampling;
      r.prompt_token_ids = req->prompt_token_ids;
      r.output_token_ids = req->output_token_ids;
      r.eos_token_ids = req->eos_token_ids;
      r.seed = req->sampling_seed;
      in.samples.push_back(r);
      plan.sample_entry.push_back(e);
    }
  }
  in.block_copies = out.block_copies;
  return {};
}

}  // namespace cartserve
