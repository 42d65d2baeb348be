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
// keep_blocks: matrices the source stores in a block format the CPU kernels
// compute on (GGUF Q4_0, Q4_1, Q8_0, Q4_K, Q6_K), the token embeddings
// included, stay so (Tensor::block_type); only the others follow matrix_dtype.
Result<ModelWeights> load_weights(const TensorSource& source, const ModelConfig& config,
                                  bool progress, DType matrix_dtype = DType::kF32,
                                  bool keep_blocks = false);

}  // namespace cartserve
