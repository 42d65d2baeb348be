// Cartridge manifest: what a cartridge is (shape, dtype, model, block
// alignment), where it came from and how to check it. JSON read/write in the
// reference system's field names, validation against the served model, the
// server block size, the loaded data and the file (SHA-256).
//
// NOTE: num_tokens_aligned is num_tokens_raw rounded *down* to block_size and
// num_blocks = num_tokens_aligned / block_size, as the reference system
// writes them (its align_to_block_size). The cartridge KV itself does not
// depend on the block size; realigned() re-derives both for another one.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "cartridge/cartridge.h"
#include "core/dtype.h"
#include "core/status.h"

namespace cartserve {

// What the served model expects of a cartridge. An empty model_id means
// "unknown": the model id is compared only when both sides know it.
struct ServedModelInfo {
  std::string model_id;
  int32_t num_layers = 0;
  int32_t num_kv_heads = 0;
  int32_t head_dim = 0;
};

struct CartridgeManifest {
  // Identity and model compatibility.
  std::string cartridge_id;
  std::string model_id;  // "" when unknown
  int32_t num_layers = 0;
  int32_t num_kv_heads = 0;
  int32_t head_dim = 0;
  DType dtype = DType::kBF16;  // float32, float16 or bfloat16

  // Shape.
  int64_t num_tokens_raw = 0;      // frozen + trainable tokens in the file
  int64_t num_tokens_aligned = 0;  // num_tokens_raw rounded down to block_size
  int32_t block_size = 0;
  int64_t num_blocks = 0;  // num_tokens_aligned / block_size
  bool has_frozen_prefix = false;

  // Optional fields (absent: not written to JSON).
  std::optional<int32_t> num_frozen_tokens;
  std::optional<std::string> checksum;      // lower-case hex SHA-256 of the file
  std::optional<uint64_t> file_size_bytes;  // 0 means unknown (reference default)
  std::optional<std::string> created_at;    // ISO 8601
  std::optional<int64_t> training_steps;
  std::optional<std::string> source_document;
  std::map<std::string, std::string> labels;  // routing labels, e.g. patient_id

  bool operator==(const CartridgeManifest&) const = default;

  // Internal consistency: an id in the id set (cartridge_id.h), positive
  // dimensions, float dtype, aligned counts, frozen prefix, checksum format,
  // no size overflow. Names the field.
  Status validate() const;
  // The same but for the id, which need only be non-empty: the manifests of
  // composites carry their keys ("a+b"), which are outside the id set.
  Status validate_fields() const;

  // One message per mismatch ("num_layers: cartridge has 28, model has 32").
  std::vector<std::string> model_mismatches(const ServedModelInfo& model) const;
  // InvalidArgument listing every mismatch, or ok.
  Status validate_against_model(const ServedModelInfo& model) const;
  // The manifest was aligned for `server_block_size` and its counts agree.
  Status validate_block_size(int32_t server_block_size) const;
  // The loaded data has the manifest's dtype, dimensions and token counts.
  Status validate_against_data(const CartridgeData& data) const;
  // File size (when known) and SHA-256 (when present) match `path`.
  // Corrupt naming the field and both values on mismatch.
  Status verify_file(const std::string& path) const;

  // Bytes of all keys and values in `dtype` (2 * layers * heads * tokens * dim).
  uint64_t kv_bytes() const;
  // The same manifest with num_tokens_aligned / num_blocks for another block size.
  CartridgeManifest realigned(int32_t new_block_size) const;
};

// floor(tokens / block_size) * block_size; 0 when block_size <= 0.
int64_t align_tokens_down(int64_t tokens, int32_t block_size);

// Model ids match when equal, or when one is a bare name (no '/') equal to
// the other's last path component, ignoring case ("Llama-3.2-3B-Instruct"
// and "meta-llama/Llama-3.2-3B-Instruct"). Empty ids match anything.
bool model_ids_match(std::string_view a, std::string_view b);

// JSON in the reference system's field names. Unknown keys are ignored
// (forward compatibility); a missing required field or a field of the wrong
// type is InvalidArgument naming it. from_json also runs validate().
nlohmann::json manifest_to_json(const CartridgeManifest& m);
Result<CartridgeManifest> manifest_from_json(const nlohmann::json& j);
Result<CartridgeManifest> parse_manifest(std::string_view text);
std::string manifest_to_string(const CartridgeManifest& m, int indent = 2);
Result<CartridgeManifest> read_manifest(const std::string& path);
Status write_manifest(const std::string& path, const CartridgeManifest& m);  // atomic

// Fields the data cannot tell (for files that come without a manifest).
struct ManifestOptions {
  std::string cartridge_id;  // "" -> the file name without its extension
  std::string model_id;      // "" -> unknown
  int32_t block_size = 16;
  std::map<std::string, std::string> labels;
  std::optional<int64_t> training_steps;
  std::optional<std::string> source_document;
  bool compute_checksum = true;  // SHA-256 of `path` (reads the whole file)
};

// Manifest describing loaded `data` read from `path` ("" for data built in
// memory: no checksum, size or created_at). created_at is the file's mtime.
Result<CartridgeManifest> manifest_from_cartridge(const CartridgeData& data,
                                                  const std::string& path,
                                                  const ManifestOptions& options);

}  // namespace cartserve
