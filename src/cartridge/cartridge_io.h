// Cartridge files: reading and writing CartridgeData.
//
// .pt (torch.save, read through the restricted unpickler, formats/torch_pt.h):
//   - a dict with `trainable_keys`, `trainable_values` and optional
//     `frozen_keys`, `frozen_values` (older files: `fixed_keys`, `fixed_values`);
//   - a dict {"cache": <any of these forms>};
//   - an object with those attributes: only the classes listed by
//     cartridge_object_classes() (the Cartridges training code's
//     cartridges.cache.TrainableCache and its AttnConfig), accepted as inert
//     attribute records (NEWOBJ + BUILD state, nothing executed); attributes
//     are looked up in the instance dict, then in its nn.Module `_modules`,
//     `_parameters` and `_buffers`;
//   - each value a list/tuple of tensors or an nn.ParameterList of
//     nn.Parameters (None or an empty list for "no frozen tokens");
//   - each tensor (1, H, T, D) (a leading batch of 1; (H, T, D) is accepted
//     too), bf16 / fp16 / fp32, any strides; frozen tokens come first:
//     K = cat(frozen, trainable, dim=2);
//   - optional `token_ids`: an int tensor or list of ints [T].
// What the tensors hold (every format): the attention cache of positions
// 0..T-1 as the model writes it, i.e. keys after RoPE. For Qwen3 (per-head
// q/k RMSNorm) keys are after k_norm and then RoPE, as in HF transformers'
// past_key_values; a Qwen3 cartridge is therefore only valid for a model with
// the same k_norm weights (tests/model/qwen3_cartridge_test.cpp checks the
// keys against HF's cache).
// save_cartridge_pt writes what the Cartridges code's TrainableCache.save
// writes: {"trainable_keys", "trainable_values", "frozen_keys",
// "frozen_values"} of nn.ParameterList (frozen parameters without grad), each
// tensor (1, H, T, D) (or plain lists of tensors with kTensorList), plus
// "token_ids" (int32 [T]) when the cartridge has them.
//
// .safetensors (cartserve's cartridge format, version 1):
//   tensors   "keys.<layer>", "values.<layer>": [H, T, D], dtype BF16/F16/F32,
//             frozen tokens first; optional "token_ids": I32 [T];
//   metadata  "format": "cartserve.cartridge",
//             "cartridge": JSON {"format_version": 1, "num_layers", "num_kv_heads",
//             "head_dim", "num_tokens", "num_frozen_tokens", "dtype" ("bfloat16" |
//             "float16" | "float32"), "has_token_ids"}.
//   The reader checks the manifest against the tensors (names, count, shapes,
//   dtype) and refuses unknown format versions.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "cartridge/cartridge.h"
#include "cartridge/loader.h"
#include "core/status.h"

namespace cartserve {

enum class CartridgeFormat { kTorchPt, kSafetensors };
const char* cartridge_format_name(CartridgeFormat f);  // "pt", "safetensors"

// By extension: .pt .pth .bin .torch -> kTorchPt; .safetensors -> kSafetensors.
Result<CartridgeFormat> cartridge_format_for_path(const std::string& path);

// How a loaded file was laid out (for `cartserve cartridge inspect`).
struct CartridgeFileInfo {
  CartridgeFormat format = CartridgeFormat::kTorchPt;
  std::string layout;  // e.g. "dict of ParameterList (trainable_*, frozen_*)"
  uint64_t file_bytes = 0;
  int pickle_protocol = 0;  // .pt only
};

struct CartridgeLoadOptions {
  bool verify_crc = true;  // .pt: CRC-32 of every storage
};

// The format is detected from the content (zip magic: .pt; else safetensors).
Result<CartridgeData> load_cartridge(const std::string& path, CartridgeFileInfo* info = nullptr,
                                     const CartridgeLoadOptions& options = {});
Result<CartridgeData> load_cartridge_pt(const std::string& path, CartridgeFileInfo* info = nullptr,
                                        const CartridgeLoadOptions& options = {});
// A .pt cartridge held in memory (`label` names it in messages).
Result<CartridgeData> load_cartridge_pt_bytes(std::span<const uint8_t> bytes,
                                              const std::string& label,
                                              CartridgeFileInfo* info = nullptr,
                                              const CartridgeLoadOptions& options = {});
Result<CartridgeData> load_cartridge_safetensors(const std::string& path,
                                                 CartridgeFileInfo* info = nullptr);

enum class PtCartridgeLayout {
  kParameterList,  // as TrainableCache.save writes (torch.load weights_only=False, or
                   // weights_only=True with ParameterList added to the safe globals)
  kTensorList,     // plain lists of tensors (torch.load weights_only=True as is)
};

Status save_cartridge_pt(const std::string& path, const CartridgeData& data,
                         PtCartridgeLayout layout = PtCartridgeLayout::kParameterList);
Status save_cartridge_safetensors(const std::string& path, const CartridgeData& data);
// By extension (cartridge_format_for_path).
Status save_cartridge(const std::string& path, const CartridgeData& data);

// A CartridgeLoader (cartridge/loader.h) for the store and residency manager:
// load_cartridge on the path. Safe to call from several threads at once.
CartridgeLoader cartridge_file_loader(const CartridgeLoadOptions& options = {});

// Classes (module.name) the .pt reader accepts as inert attribute records.
const std::vector<std::string>& cartridge_object_classes();

// A deep copy with keys/values converted to `dtype` (F32, F16 or BF16; NaN stays NaN).
Result<CartridgeData> cast_cartridge(const CartridgeData& data, DType dtype);

}  // namespace cartserve
