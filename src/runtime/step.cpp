#include "runtime/step.h"

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

}  // namespace cartserve
