// The runner's side of the scheduler: a persistent block-table row per
// running request, kept up to date from the scheduler's deltas (new rows,
// appended blocks, dropped rows), and the flat StepInput of each step built
// from it.
#pragma once

#include <functional>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/status.h"
#include "engine/request.h"
#include "engine/scheduler.h"
#include "runtime/step.h"

namespace cartserve {

// What each part of a step's output belongs to.
struct StepPlan {
  std::vector<size_t> sample_entry;  // [in.samples.size()]: index into out.scheduled
  struct PromptRows {
    size_t entry = 0;            // index into out.scheduled
    int32_t first_position = 0;  // position of the first row; it predicts position + 1
  };
  std::vector<PromptRows> prompt_rows;  // [in.prompt_logprobs.size()]
};

using RequestLookup = std::function<const Request*(const std::string& id)>;

class InputBatch {
 public:
  explicit InputBatch(int32_t block_size) : block_size_(block_size) {}

  // Applies the deltas of `out` and fills `in` (cleared first) and `plan`.
  // `find` gives each scheduled request (sampling parameters, histories);
  // the spans in `in` point into those requests.
  Status build(const SchedulerOutput& out, const RequestLookup& find, StepInput& in,
               StepPlan& plan);
  // Forgets a request's row (it finished outside a step, e.g. a stop string).
  void drop(const std::string& request_id) { rows_.erase(request_id); }
  size_t num_rows() const { return rows_.size(); }
  // The block table of a running request (empty when unknown).
  const std::vector<int32_t>& row(const std::string& request_id) const;

 private:
  int32_t block_size_;
  std::unordered_map<std::string, std::vector<int32_t>> rows_;  // request id -> block table
};

}  // namespace cartserve
