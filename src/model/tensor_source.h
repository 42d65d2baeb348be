// Where weights come from during loading. Each source maps the model's
// logical tensor names to its own naming and returns fp32 tensors in HF
// layout (see weights.h).
#pragma once

#include <memory>
#include <string>

#include "core/status.h"
#include "core/tensor.h"
#include "model/config.h"

namespace cartserve {

// Logical names: "embed", "final_norm", "lm_head", "rope_freqs", and per layer
// "attn_norm", "wq", "wk", "wv", "wo", "bq", "bk", "bv", "q_norm", "k_norm",
// "ffn_norm", "w_gate", "w_up", "w_down" (with `layer` >= 0).
class TensorSource {
 public:
  virtual ~TensorSource() = default;
  virtual bool has(const std::string& logical, int layer = -1) const = 0;
  // kNotFound naming the source's tensor name and file when absent.
  virtual Result<Tensor> load(const std::string& logical, int layer = -1) const = 0;
  // A matrix as the source stores it when that is a block format the CPU
  // kernels compute on (Q4_0, Q4_1, Q8_0, Q4_K, Q6_K; see Tensor::block_type),
  // rows in HF order; an empty tensor otherwise (then use load()).
  virtual Result<Tensor> load_blocks(const std::string& /*logical*/, int /*layer*/ = -1) const {
    return Tensor{};
  }
  // Count of tensors load_weights will read (for the progress bar).
  virtual std::string describe() const = 0;
};

class GgufFile;
class SafetensorsSet;

std::unique_ptr<TensorSource> make_gguf_source(const GgufFile& gguf, const ModelConfig& config);
std::unique_ptr<TensorSource> make_safetensors_source(const SafetensorsSet& set,
                                                      const std::string& dir);

}  // namespace cartserve
