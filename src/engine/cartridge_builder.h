// Builds a prefilled cartridge (the seed's "canary"): the model runs over a
// document and its KV cache becomes the cartridge, with the token ids stored
// so prefix mode can verify a prompt against them.
//
// NOTE: by default the document is wrapped as the system turn of the model's
// chat template (rendered alone, no generation prompt), so it starts with BOS
// where the template emits one, as the Cartridges code initialises
// cartridges; a virtual-mode chat request then continues with the user turn
// (OpenAiService renders [system, messages...] minus [system]). `raw` takes
// the text as a completion prompt would (BOS when the tokenizer adds one).
#pragma once

#include <string>
#include <vector>

#include "cartridge/cartridge.h"
#include "core/status.h"
#include "model/model.h"

namespace cartserve {

struct CartridgeBuildOptions {
  bool raw = false;
  DType dtype = DType::kBF16;
  int32_t chunk = 256;   // prefill chunk (tokens)
  bool progress = true;  // progress bar on a terminal
};

// Token ids the cartridge will hold for `text` under `options`.
Result<std::vector<int32_t>> cartridge_prompt_ids(const Model& model, const std::string& text,
                                                  const CartridgeBuildOptions& options);

Result<CartridgeData> build_cartridge(const Model& model, const std::string& text,
                                      const CartridgeBuildOptions& options);

}  // namespace cartserve
