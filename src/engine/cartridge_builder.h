// Builds a prefilled cartridge (the seed's "canary"): an engine request
// prefills the document's tokens and exports their KV through the runtime
// seam (GenerateRequest::export_kv); the KV becomes the cartridge, with the
// token ids stored so prefix mode can verify a prompt against them. Which
// tokens a document becomes is PromptBuilder::cartridge's business.
#pragma once

#include <vector>

#include "cartridge/cartridge.h"
#include "core/status.h"
#include "engine/engine.h"

namespace cartserve {

// Prefills `ids` on `engine` and returns their KV as a cartridge stored in
// `dtype` (bf16, fp16 or fp32). The engine needs room for ids.size() + 1
// positions.
Result<CartridgeData> export_cartridge(Engine& engine, const std::vector<int32_t>& ids,
                                       DType dtype);

}  // namespace cartserve
