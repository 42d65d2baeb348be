// Assembles ModelWeights from a TensorSource, checking every shape against
// the config (a mismatch names the tensor, its shape and the expected one).
#pragma once

#include "core/status.h"
#include "model/config.h"
#include "model/tensor_source.h"
#include "model/weights.h"

namespace cartserve {

Result<ModelWeights> load_weights(const TensorSource& source, const ModelConfig& config,
                                  bool progress);

}  // namespace cartserve
