// Model hyper-parameters, from a HF config.json or GGUF metadata.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "core/status.h"

namespace cartserve {

class GgufFile;

enum class ModelArch {
  kLlama,  // Llama 2/3.x, SmolLM/SmolLM2, Mistral (no sliding window)
  kQwen2,  // Qwen2/Qwen2.5: Llama plus q/k/v biases
  kQwen3,  // Qwen3: Llama plus a per-head RMSNorm on q and k before RoPE (qk_norm)
};

const char* model_arch_name(ModelArch arch);

struct RopeScaling {
  enum class Type { kNone, kLinear, kLlama3 };
  Type type = Type::kNone;
  double factor = 1.0;
  double low_freq_factor = 1.0;                     // llama3
  double high_freq_factor = 4.0;                    // llama3
  int64_t original_max_position_embeddings = 8192;  // llama3
};

struct ModelConfig {
  ModelArch arch = ModelArch::kLlama;
  std::string arch_name;  // as given by the source ("LlamaForCausalLM", "llama", ...)
  std::string model_id;   // a human-meaningful id (HF name_or_path, GGUF general.name)

  int32_t vocab_size = 0;
  int32_t hidden_size = 0;
  int32_t intermediate_size = 0;
  int32_t num_layers = 0;
  int32_t num_heads = 0;
  int32_t num_kv_heads = 0;
  int32_t head_dim = 0;
  float rms_norm_eps = 1e-5f;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  int64_t max_position_embeddings = 2048;
  bool tie_word_embeddings = false;
  bool attention_bias = false;            // q/k/v projections carry biases (Qwen2)
  bool qk_norm = false;                   // RMSNorm over each head of q and k before RoPE (Qwen3)
  std::optional<int64_t> sliding_window;  // Mistral/Qwen2; we serve up to this length

  std::optional<int32_t> bos_token_id;
  std::vector<int32_t> eos_token_ids;
  std::string source_dtype;  // "bfloat16", "Q4_1", ... (for the summary line)

  int32_t q_dim() const { return num_heads * head_dim; }
  int32_t kv_dim() const { return num_kv_heads * head_dim; }
  // Parameters, counting tied embeddings once.
  int64_t num_parameters() const;
  // Bytes of K plus V per token over all layers at `bytes_per_elem`.
  int64_t kv_bytes_per_token(int bytes_per_elem) const;

  // Consistency checks (positive sizes, heads divide, etc.).
  Status validate() const;
};

// Parses config.json text. Missing required keys are kInvalidArgument naming
// the key; an unknown architecture is kUnsupported naming it.
Result<ModelConfig> parse_hf_config(const std::string& json_text);

// Reads `<arch>.*` GGUF metadata.
Result<ModelConfig> config_from_gguf(const GgufFile& gguf);

}  // namespace cartserve
