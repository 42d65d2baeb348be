// Rotary-embedding frequency table for a model, with its scaling applied.
#pragma once

#include <vector>

#include "model/config.h"

namespace cartserve {

// inv_freq[i] = 1 / theta^(2i / head_dim), then:
//  - linear scaling: divided by factor;
//  - llama3 scaling: HF's _compute_llama3_parameters (long wavelengths divided
//    by factor, a smooth blend in between);
//  - `freq_factors` (GGUF rope_freqs tensor, llama.cpp's form of llama3
//    scaling): inv_freq[i] / freq_factors[i].
// Returns [head_dim / 2] values.
std::vector<float> rope_inv_freq(const ModelConfig& config,
                                 const std::vector<float>& freq_factors = {});

}  // namespace cartserve
