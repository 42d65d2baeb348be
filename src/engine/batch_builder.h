// Turns a scheduler step into a ForwardBatch: rows are the scheduled tokens
// in scheduler order; each request is one attention sequence over its block
// table. Also records which logits rows feed the sampler and which give
// prompt logprobs.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "engine/request.h"
#include "engine/scheduler.h"
#include "model/llama.h"

namespace cartserve {

struct BatchPlan {
  ForwardBatch batch;  // points into the SchedulerOutput's block tables
  // Per scheduled entry: index of its sampling row in the logits, or -1.
  std::vector<int32_t> sample_index;  // [out.scheduled.size()]
  // Rows whose logits predict prompt tokens (for prompt logprobs).
  struct PromptRows {
    size_t entry = 0;            // index into out.scheduled
    int32_t first_logit = 0;     // index of the first such row in the logits
    int32_t first_position = 0;  // position of that row; it predicts position + 1
    int32_t count = 0;
  };
  std::vector<PromptRows> prompt_rows;
};

using RequestLookup = std::function<const Request*(const std::string& id)>;

// `out` must outlive the plan (the batch holds pointers to its block tables).
BatchPlan build_batch(const SchedulerOutput& out, int32_t block_size, const RequestLookup& find);

}  // namespace cartserve
