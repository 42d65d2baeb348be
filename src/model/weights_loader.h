// Assembles ModelWeights from a TensorSource, checking every shape against
// the config (a mismatch names the tensor, its shape and the expected one).
#pragma once

#include "core/status.h"
#include "model/config.h"
#include "model/tensor_source.h"
#include "model/weights.h"

namespace cartserve {

// matrix_dtype: storage of the linear layers' and the LM head's matrices,
// kF32 or kBF16 (halves what a decode step reads); everything else is fp32.
Result<ModelWeights> load_weights(const TensorSource& source, const ModelConfig& config,
                                  bool progress, DType matrix_dtype = DType::kF32);

}  // namespace cartserve
