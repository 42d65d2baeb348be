#include "engine/batch_builder.h"

#include <algorithm>

namespace cartserve {

BatchPlan build_batch(const SchedulerOutput& out, int32_t block_size, const RequestLookup& find) {
  BatchPlan plan;
  ForwardBatch& b = plan.batch;
  plan.sample_index.assign(out.scheduled.size(), -1);
  int32_t row = 0;
  for (size_t e = 0; e < out.scheduled.size(); ++e) {
    const ScheduledRequest& s = out.scheduled[e];
    const int32_t first_row = row;
    for (int32_t i = 0; i < s.num_tokens; ++i) {
      const int32_t pos = s.start_position + i;
      b.tokens.push_back(s.token_ids[static_cast<size_t>(i)]);
      b.positions.push_back(pos);
      b.slots.push_back(s.block_table[static_cast<size_t>(pos / block_size)] * block_size +
                        pos % block_size);
    }
    row += s.num_tokens;
    ops::AttnSeq seq;
    seq.q_start = first_row;
    seq.q_len = s.num_tokens;
    seq.kv_len = s.start_position + s.num_tokens;
    seq.block_table = s.block_table.data();
    seq.n_blocks = (seq.kv_len + block_size - 1) / block_size;
    b.seqs.push_back(seq);

    // Prompt logprobs: positions p in [v, v + P - 1) of this chunk predict prompt token p + 1.
    const Request* req = find ? find(s.request_id) : nullptr;
    if (req && req->sampling.prompt_logprobs >= 0) {
      const int32_t v = req->num_virtual_tokens;
      const int32_t lo = std::max(s.start_position, v);
      const int32_t hi =
          std::min(s.start_position + s.num_tokens, v + req->num_prompt_tokens() - 1);
      if (hi > lo) {
        BatchPlan::PromptRows pr;
        pr.entry = e;
        pr.first_logit = static_cast<int32_t>(b.logit_rows.size());
        pr.first_position = lo;
        pr.count = hi - lo;
        for (int32_t p = lo; p < hi; ++p)
          b.logit_rows.push_back(first_row + (p - s.start_position));
        plan.prompt_rows.push_back(pr);
      }
    }
    if (s.needs_logits) {
      plan.sample_index[e] = static_cast<int32_t>(b.logit_rows.size());
      b.logit_rows.push_back(row - 1);
    }
  }
  return plan;
}

}  // namespace cartserve
