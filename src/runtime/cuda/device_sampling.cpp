#include "runtime/cuda/device_sampling.h"

#include <cmath>

namespace cartserve::cuda {

ops::cuda::SampleRowParams device_sample_row(const SampleRow& r, int32_t vocab,
                                             std::vector<ops::cuda::TokenEdit>& edits) {
  const SamplingParams& sp = *r.params;
  ops::cuda::SampleRowParams p;
  p.temperature = sp.temperature;
  p.top_k = sp.top_k;
  p.top_p = sp.top_p;
  p.min_p = sp.min_p;
  p.log_min_p = sp.min_p > 0.0f ? std::log(sp.min_p) : 0.0f;  // the CPU sampler's float
  p.repetition_penalty = sp.repetition_penalty;
  p.presence_penalty = sp.presence_penalty;
  p.frequency_penalty = sp.frequency_penalty;
  p.seed = r.seed;
  p.draw_index = r.output_token_ids.size();
  p.num_logprobs = sp.logprobs || sp.top_logprobs > 0 ? sp.top_logprobs : -1;
  std::vector<int32_t> masked;  // until min_tokens: EOS (unless ignore_eos) and stop ids
  if (static_cast<int32_t>(r.output_token_ids.size()) < sp.min_tokens) {
    if (!sp.ignore_eos) masked.assign(r.eos_token_ids.begin(), r.eos_token_ids.end());
    masked.insert(masked.end(), sp.stop_token_ids.begin(), sp.stop_token_ids.end());
  }
  p.edit_begin = static_cast<int32_t>(edits.size());
  ops::cuda::append_token_edits(r.prompt_token_ids.data(), r.prompt_token_ids.size(),
                                r.output_token_ids.data(), r.output_token_ids.size(),
                                sp.repetition_penalty != 1.0f,
                                sp.frequency_penalty != 0.0f || sp.presence_penalty != 0.0f,
                                masked.data(), masked.size(), vocab, edits);
  p.edit_end = static_cast<int32_t>(edits.size());
  return p;
}

}  // namespace cartserve::cuda
