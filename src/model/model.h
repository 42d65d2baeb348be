// A loaded model: config, fp32 weights, tokenizer and chat template, from a
// GGUF file or a Hugging Face folder.
#pragma once

#include <memory>
#include <string>

#include "core/status.h"
#include "model/config.h"
#include "model/weights.h"
#include "tokenizer/tokenizer.h"

namespace cartserve {

struct Model {
  ModelConfig config;
  ModelWeights weights;
  Tokenizer tokenizer;
  std::string chat_template;  // Jinja source; empty when the model has none
  std::string bos_text;       // text of the BOS token ("" if none)
  std::string eos_text;       // text of the EOS token ("" if none)
  std::string path;           // where it was loaded from
};

struct LoadOptions {
  bool progress = true;  // progress bar on a terminal (stderr)
  bool summary = true;   // one-line summary at the end (log, info level)
  // Storage of the weight matrices (see load_weights): kF32 or kBF16.
  DType weight_dtype = DType::kF32;
  // Keep a GGUF's block-quantized matrices so (CPU backend only; see
  // load_weights); the others follow weight_dtype.
  bool keep_quantized = false;
};

// `path` is a .gguf file or a folder with config.json + *.safetensors +
// tokenizer.json. Errors name the file and the missing/invalid piece.
Result<std::unique_ptr<Model>> load_model(const std::string& path, const LoadOptions& options = {});

// "llama | 134.5M params | Q4_1 -> float32 | 513.0 MiB weights | 1.2 s"
std::string model_summary(const Model& model, double load_seconds);

}  // namespace cartserve
