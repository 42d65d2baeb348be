#include "cartridge/manifest.h"

#include <sys/stat.h>

#include <algorithm>
#include <cctype>
#include <ctime>
#include <filesystem>
#include <limits>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "cartridge/cartridge_id.h"
#include "core/mapped_file.h"
#include "core/sha256.h"

namespace cartserve {
namespace {

using nlohmann::json;

// Upper bounds that keep every size computation far from overflow.
constexpr int64_t kMaxDim = 1 << 20;
constexpr int64_t kMaxTokens = std::numeric_limits<int32_t>::max();

bool is_float_kv_dtype(DType t) {
  return t == DType::kF32 || t == DType::kF16 || t == DType::kBF16;
}

bool is_lower_hex_sha256(const std::string& s) {
  if (s.size() != 64) return false;
  return std::all_of(s.begin(), s.end(),
                     [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

std::string lower(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return out;
}

const char* json_type_name(const json& v) {
  if (v.is_number_integer()) return "integer";
  if (v.is_number_float()) return "number";
  return v.type_name();
}

// Short printable form of a JSON value for error messages.
std::string json_excerpt(const json& v) {
  std::string s = v.dump();
  if (s.size() > 40) s = s.substr(0, 37) + "...";
  return s;
}

Status field_type_error(std::string_view field, const char* want, const json& got) {
  return make_error(ErrorCode::kInvalidArgument, "manifest field '{}': expected {}, got {} {}",
                    field, want, json_type_name(got), json_excerpt(got));
}

Status missing_field(std::string_view field) {
  return make_error(ErrorCode::kInvalidArgument, "manifest is missing required field '{}'", field);
}

// Reads an integer field in [lo, hi]; absent or null -> nullopt.
Status read_int(const json& j, const char* field, int64_t lo, int64_t hi,
                std::optional<int64_t>* out) {
  out->reset();
  auto it = j.find(field);
  if (it == j.end() || it->is_null()) return {};
  if (!it->is_number_integer()) return field_type_error(field, "an integer", *it);
  int64_t v;
  if (it->is_number_unsigned()) {
    const uint64_t u = it->get<uint64_t>();
    if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return make_error(ErrorCode::kInvalidArgument, "manifest field '{}': {} is out of range",
                        field, u);
    }
    v = static_cast<int64_t>(u);
  } else {
    v = it->get<int64_t>();
  }
  if (v < lo || v > hi) {
    return make_error(ErrorCode::kInvalidArgument, "manifest field '{}': {} is not in [{}, {}]",
                      field, v, lo, hi);
  }
  *out = v;
  return {};
}

Status required_int(const json& j, const char* field, int64_t lo, int64_t hi, int64_t* out) {
  std::optional<int64_t> v;
  CS_RETURN_IF_ERROR(read_int(j, field, lo, hi, &v));
  if (!v) return missing_field(field);
  *out = *v;
  return {};
}

Status read_string(const json& j, const char* field, std::optional<std::string>* out) {
  out->reset();
  auto it = j.find(field);
  if (it == j.end() || it->is_null()) return {};
  if (!it->is_string()) return field_type_error(field, "a string", *it);
  *out = it->get<std::string>();
  return {};
}

Status required_string(const json& j, const char* field, std::string* out) {
  std::optional<std::string> v;
  CS_RETURN_IF_ERROR(read_string(j, field, &v));
  if (!v) return missing_field(field);
  *out = std::move(*v);
  return {};
}

std::string iso8601_utc(time_t t) {
  struct tm tm_utc;
  gmtime_r(&t, &tm_utc);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm_utc);
  return buf;
}

}  // namespace

int64_t align_tokens_down(int64_t tokens, int32_t block_size) {
  if (block_size <= 0 || tokens <= 0) return 0;
  return tokens / block_size * block_size;
}

bool model_ids_match(std::string_view a, std::string_view b) {
  if (a.empty() || b.empty() || a == b) return true;
  const bool a_bare = a.find('/') == std::string_view::npos;
  const bool b_bare = b.find('/') == std::string_view::npos;
  if (a_bare == b_bare) return lower(a) == lower(b);
  const std::string_view bare = a_bare ? a : b;
  std::string_view full = a_bare ? b : a;
  while (!full.empty() && full.back() == '/')
    full.remove_suffix(1);
  const size_t slash = full.rfind('/');
  return lower(full.substr(slash == std::string_view::npos ? 0 : slash + 1)) == lower(bare);
}

Status CartridgeManifest::validate() const {
  CS_RETURN_IF_ERROR(validate_cartridge_id(cartridge_id, "manifest field 'cartridge_id'"));
  return validate_fields();
}

Status CartridgeManifest::validate_fields() const {
  if (cartridge_id.empty())
    return make_error(ErrorCode::kInvalidArgument, "manifest field 'cartridge_id' is empty");
  const std::pair<const char*, int64_t> dims[] = {
      {"num_layers", num_layers}, {"num_kv_heads", num_kv_heads}, {"head_dim", head_dim}};
  for (const auto& [name, v] : dims) {
    if (v <= 0 || v > kMaxDim) {
      return make_error(ErrorCode::kInvalidArgument, "manifest field '{}': {} is not in [1, {}]",
                        name, v, kMaxDim);
    }
  }
  if (!is_float_kv_dtype(dtype)) {
    return make_error(
        ErrorCode::kInvalidArgument,
        "manifest field 'dtype': {} is not a cartridge dtype (float32, float16, bfloat16)",
        dtype_name(dtype));
  }
  if (num_tokens_raw <= 0 || num_tokens_raw > kMaxTokens) {
    return make_error(ErrorCode::kInvalidArgument,
                      "manifest field 'num_tokens_raw': {} is not in [1, {}]", num_tokens_raw,
                      kMaxTokens);
  }
  if (block_size <= 0 || block_size > kMaxDim) {
    return make_error(ErrorCode::kInvalidArgument,
                      "manifest field 'block_size': {} is not in [1, {}]", block_size, kMaxDim);
  }
  const int64_t want_aligned = align_tokens_down(num_tokens_raw, block_size);
  if (num_tokens_aligned != want_aligned) {
    return make_error(
        ErrorCode::kInvalidArgument,
        "manifest field 'num_tokens_aligned': manifest has {}, expected {} (num_tokens_raw {} "
        "rounded down to block_size {})",
        num_tokens_aligned, want_aligned, num_tokens_raw, block_size);
  }
  if (num_blocks != want_aligned / block_size) {
    return make_error(
        ErrorCode::kInvalidArgument,
        "manifest field 'num_blocks': manifest has {}, expected {} (num_tokens_aligned {} / "
        "block_size {})",
        num_blocks, want_aligned / block_size, num_tokens_aligned, block_size);
  }
  if (num_frozen_tokens) {
    if (*num_frozen_tokens < 0 || *num_frozen_tokens > num_tokens_raw) {
      return make_error(ErrorCode::kInvalidArgument,
                        "manifest field 'num_frozen_tokens': {} is not in [0, num_tokens_raw {}]",
                        *num_frozen_tokens, num_tokens_raw);
    }
    if (has_frozen_prefix != (*num_frozen_tokens > 0)) {
      return make_error(
          ErrorCode::kInvalidArgument,
          "manifest fields disagree: has_frozen_prefix is {} but num_frozen_tokens is {}",
          has_frozen_prefix, *num_frozen_tokens);
    }
  }
  if (checksum && !is_lower_hex_sha256(*checksum)) {
    return make_error(
        ErrorCode::kInvalidArgument,
        "manifest field 'checksum': '{}' is not a SHA-256 digest (64 lower-case hex digits)",
        checksum->size() > 80 ? checksum->substr(0, 77) + "..." : *checksum);
  }
  if (training_steps && *training_steps < 0) {
    return make_error(ErrorCode::kInvalidArgument,
                      "manifest field 'training_steps': {} is negative", *training_steps);
  }
  for (const auto& [k, v] : labels) {
    if (k.empty())
      return make_error(ErrorCode::kInvalidArgument, "manifest field 'labels' has an empty key");
  }
  return {};
}

std::vector<std::string> CartridgeManifest::model_mismatches(const ServedModelInfo& model) const {
  std::vector<std::string> out;
  if (!model_ids_match(model_id, model.model_id)) {
    out.push_back(
        fmt::format("model_id: cartridge has '{}', model has '{}'", model_id, model.model_id));
  }
  if (num_layers != model.num_layers) {
    out.push_back(
        fmt::format("num_layers: cartridge has {}, model has {}", num_layers, model.num_layers));
  }
  if (num_kv_heads != model.num_kv_heads) {
    out.push_back(fmt::format("num_kv_heads: cartridge has {}, model has {}", num_kv_heads,
                              model.num_kv_heads));
  }
  if (head_dim != model.head_dim) {
    out.push_back(
        fmt::format("head_dim: cartridge has {}, model has {}", head_dim, model.head_dim));
  }
  return out;
}

Status CartridgeManifest::validate_against_model(const ServedModelInfo& model) const {
  const auto errs = model_mismatches(model);
  if (errs.empty()) return {};
  return make_error(ErrorCode::kInvalidArgument, "cartridge '{}' does not fit the model: {}",
                    cartridge_id, fmt::join(errs, "; "));
}

Status CartridgeManifest::validate_block_size(int32_t server_block_size) const {
  if (server_block_size <= 0) {
    return make_error(ErrorCode::kInvalidArgument, "server block_size {} is not positive",
                      server_block_size);
  }
  if (block_size != server_block_size) {
    return make_error(ErrorCode::kInvalidArgument,
                      "cartridge '{}' block_size: cartridge has {}, server has {}", cartridge_id,
                      block_size, server_block_size);
  }
  const int64_t want = align_tokens_down(num_tokens_raw, server_block_size);
  if (num_tokens_aligned != want) {
    return make_error(ErrorCode::kInvalidArgument,
                      "cartridge '{}' num_tokens_aligned: cartridge has {}, server block size {} "
                      "gives {}",
                      cartridge_id, num_tokens_aligned, server_block_size, want);
  }
  if (num_blocks != want / server_block_size) {
    return make_error(ErrorCode::kInvalidArgument,
                      "cartridge '{}' num_blocks: cartridge has {}, server block size {} gives {}",
                      cartridge_id, num_blocks, server_block_size, want / server_block_size);
  }
  return {};
}

Status CartridgeManifest::validate_against_data(const CartridgeData& data) const {
  std::vector<std::string> errs;
  if (dtype != data.dtype) {
    errs.push_back(fmt::format("dtype: manifest has {}, data has {}", dtype_name(dtype),
                               dtype_name(data.dtype)));
  }
  if (num_layers != data.num_layers) {
    errs.push_back(
        fmt::format("num_layers: manifest has {}, data has {}", num_layers, data.num_layers));
  }
  if (num_kv_heads != data.num_kv_heads) {
    errs.push_back(
        fmt::format("num_kv_heads: manifest has {}, data has {}", num_kv_heads, data.num_kv_heads));
  }
  if (head_dim != data.head_dim) {
    errs.push_back(fmt::format("head_dim: manifest has {}, data has {}", head_dim, data.head_dim));
  }
  if (num_tokens_raw != data.num_tokens) {
    errs.push_back(fmt::format("num_tokens_raw: manifest has {}, data has {}", num_tokens_raw,
                               data.num_tokens));
  }
  if (num_frozen_tokens && *num_frozen_tokens != data.num_frozen_tokens) {
    errs.push_back(fmt::format("num_frozen_tokens: manifest has {}, data has {}",
                               *num_frozen_tokens, data.num_frozen_tokens));
  } else if (!num_frozen_tokens && has_frozen_prefix != (data.num_frozen_tokens > 0)) {
    errs.push_back(fmt::format("has_frozen_prefix: manifest has {}, data has {} frozen tokens",
                               has_frozen_prefix, data.num_frozen_tokens));
  }
  if (errs.empty()) return {};
  return make_error(ErrorCode::kCorrupt, "cartridge '{}' data does not match its manifest: {}",
                    cartridge_id, fmt::join(errs, "; "));
}

Status CartridgeManifest::verify_file(const std::string& path) const {
  if (file_size_bytes && *file_size_bytes != 0) {
    std::error_code ec;
    const uint64_t size = std::filesystem::file_size(path, ec);
    if (ec) {
      return make_error(ErrorCode::kIo, "cannot stat cartridge file '{}': {}", path, ec.message());
    }
    if (size != *file_size_bytes) {
      return make_error(ErrorCode::kCorrupt,
                        "cartridge '{}' file_size_bytes: manifest has {}, file '{}' has {}",
                        cartridge_id, *file_size_bytes, path, size);
    }
  }
  if (checksum) {
    CS_ASSIGN_OR_RETURN(std::string actual, sha256_file_hex(path));
    if (actual != *checksum) {
      return make_error(ErrorCode::kCorrupt,
                        "cartridge '{}' checksum: manifest has {}, file '{}' has {}", cartridge_id,
                        *checksum, path, actual);
    }
  }
  return {};
}

uint64_t CartridgeManifest::kv_bytes() const {
  if (num_layers <= 0 || num_kv_heads <= 0 || head_dim <= 0 || num_tokens_raw <= 0) return 0;
  return 2ull * static_cast<uint64_t>(num_layers) * static_cast<uint64_t>(num_kv_heads) *
         static_cast<uint64_t>(num_tokens_raw) * static_cast<uint64_t>(head_dim) *
         dtype_size(dtype);
}

CartridgeManifest CartridgeManifest::realigned(int32_t new_block_size) const {
  CartridgeManifest m = *this;
  m.block_size = new_block_size;
  m.num_tokens_aligned = align_tokens_down(num_tokens_raw, new_block_size);
  m.num_blocks = new_block_size > 0 ? m.num_tokens_aligned / new_block_size : 0;
  return m;
}

json manifest_to_json(const CartridgeManifest& m) {
  json j = json::object();
  j["cartridge_id"] = m.cartridge_id;
  j["model_id"] = m.model_id;
  j["num_layers"] = m.num_layers;
  j["num_kv_heads"] = m.num_kv_heads;
  j["head_dim"] = m.head_dim;
  j["dtype"] = dtype_name(m.dtype);
  j["num_tokens_raw"] = m.num_tokens_raw;
  j["num_tokens_aligned"] = m.num_tokens_aligned;
  j["block_size"] = m.block_size;
  j["num_blocks"] = m.num_blocks;
  j["has_frozen_prefix"] = m.has_frozen_prefix;
  if (m.num_frozen_tokens) j["num_frozen_tokens"] = *m.num_frozen_tokens;
  if (m.checksum) j["checksum"] = *m.checksum;
  if (m.file_size_bytes) j["file_size_bytes"] = *m.file_size_bytes;
  if (m.created_at) j["created_at"] = *m.created_at;
  if (m.training_steps) j["training_steps"] = *m.training_steps;
  if (m.source_document) j["source_document"] = *m.source_document;
  j["labels"] = m.labels;
  return j;
}

Result<CartridgeManifest> manifest_from_json(const json& j) {
  if (!j.is_object()) {
    return make_error(ErrorCode::kInvalidArgument, "manifest must be a JSON object, got {}",
                      json_type_name(j));
  }
  CartridgeManifest m;
  int64_t v = 0;
  CS_RETURN_IF_ERROR(required_string(j, "cartridge_id", &m.cartridge_id));
  CS_RETURN_IF_ERROR(required_string(j, "model_id", &m.model_id));
  CS_RETURN_IF_ERROR(required_int(j, "num_layers", 1, kMaxDim, &v));
  m.num_layers = static_cast<int32_t>(v);
  CS_RETURN_IF_ERROR(required_int(j, "num_kv_heads", 1, kMaxDim, &v));
  m.num_kv_heads = static_cast<int32_t>(v);
  CS_RETURN_IF_ERROR(required_int(j, "head_dim", 1, kMaxDim, &v));
  m.head_dim = static_cast<int32_t>(v);

  std::string dtype;
  CS_RETURN_IF_ERROR(required_string(j, "dtype", &dtype));
  const auto parsed = parse_dtype(dtype);
  if (!parsed || !is_float_kv_dtype(*parsed)) {
    return make_error(ErrorCode::kInvalidArgument,
                      "manifest field 'dtype': '{}' is not a cartridge dtype (float32, float16, "
                      "bfloat16)",
                      dtype);
  }
  m.dtype = *parsed;

  CS_RETURN_IF_ERROR(required_int(j, "num_tokens_raw", 1, kMaxTokens, &m.num_tokens_raw));
  CS_RETURN_IF_ERROR(required_int(j, "num_tokens_aligned", 0, kMaxTokens, &m.num_tokens_aligned));
  CS_RETURN_IF_ERROR(required_int(j, "block_size", 1, kMaxDim, &v));
  m.block_size = static_cast<int32_t>(v);
  CS_RETURN_IF_ERROR(required_int(j, "num_blocks", 0, kMaxTokens, &m.num_blocks));

  auto frozen = j.find("has_frozen_prefix");
  if (frozen == j.end() || frozen->is_null()) return missing_field("has_frozen_prefix");
  if (!frozen->is_boolean()) return field_type_error("has_frozen_prefix", "a boolean", *frozen);
  m.has_frozen_prefix = frozen->get<bool>();

  std::optional<int64_t> opt;
  CS_RETURN_IF_ERROR(read_int(j, "num_frozen_tokens", 0, kMaxTokens, &opt));
  if (opt) m.num_frozen_tokens = static_cast<int32_t>(*opt);
  CS_RETURN_IF_ERROR(read_string(j, "checksum", &m.checksum));
  // The reference system writes "" for "not computed".
  if (m.checksum && m.checksum->empty()) m.checksum.reset();
  if (m.checksum) m.checksum = lower(*m.checksum);
  CS_RETURN_IF_ERROR(read_int(j, "file_size_bytes", 0, std::numeric_limits<int64_t>::max(), &opt));
  if (opt) m.file_size_bytes = static_cast<uint64_t>(*opt);
  CS_RETURN_IF_ERROR(read_string(j, "created_at", &m.created_at));
  if (m.created_at && m.created_at->empty()) m.created_at.reset();
  CS_RETURN_IF_ERROR(
      read_int(j, "training_steps", 0, std::numeric_limits<int64_t>::max(), &m.training_steps));
  CS_RETURN_IF_ERROR(read_string(j, "source_document", &m.source_document));

  auto labels = j.find("labels");
  if (labels != j.end() && !labels->is_null()) {
    if (!labels->is_object()) return field_type_error("labels", "an object", *labels);
    for (const auto& [k, val] : labels->items()) {
      if (val.is_string()) {
        m.labels[k] = val.get<std::string>();
      } else if (val.is_number() || val.is_boolean()) {
        m.labels[k] = val.dump();  // 4 -> "4", true -> "true": labels compare as text
      } else {
        return field_type_error("labels." + k, "a string, number or boolean", val);
      }
    }
  }
  CS_RETURN_IF_ERROR(m.validate());
  return m;
}

Result<CartridgeManifest> parse_manifest(std::string_view text) {
  json j = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) {
    return make_error(ErrorCode::kInvalidArgument, "manifest is not valid JSON");
  }
  return manifest_from_json(j);
}

std::string manifest_to_string(const CartridgeManifest& m, int indent) {
  return manifest_to_json(m).dump(indent);
}

Result<CartridgeManifest> read_manifest(const std::string& path) {
  CS_ASSIGN_OR_RETURN(std::string text, read_file(path));
  auto m = parse_manifest(text);
  if (!m.ok()) return m.status().with_context(fmt::format("manifest '{}'", path));
  return m;
}

Status write_manifest(const std::string& path, const CartridgeManifest& m) {
  CS_RETURN_IF_ERROR(m.validate());
  return write_file_atomic(path, manifest_to_string(m) + "\n");
}

Result<CartridgeManifest> manifest_from_cartridge(const CartridgeData& data,
                                                  const std::string& path,
                                                  const ManifestOptions& options) {
  CS_RETURN_IF_ERROR(data.validate());
  CartridgeManifest m;
  m.cartridge_id = options.cartridge_id;
  if (m.cartridge_id.empty() && !path.empty()) {
    m.cartridge_id = std::filesystem::path(path).stem().string();
  }
  m.model_id = options.model_id;
  m.num_layers = data.num_layers;
  m.num_kv_heads = data.num_kv_heads;
  m.head_dim = data.head_dim;
  m.dtype = data.dtype;
  m.num_tokens_raw = data.num_tokens;
  m.block_size = options.block_size;
  m.num_tokens_aligned = align_tokens_down(m.num_tokens_raw, m.block_size);
  m.num_blocks = m.block_size > 0 ? m.num_tokens_aligned / m.block_size : 0;
  m.has_frozen_prefix = data.num_frozen_tokens > 0;
  m.num_frozen_tokens = data.num_frozen_tokens;
  m.labels = options.labels;
  m.training_steps = options.training_steps;
  m.source_document = options.source_document;
  if (!path.empty()) {
    struct stat st;
    if (::stat(path.c_str(), &st) != 0) {
      return make_error(ErrorCode::kIo, "cannot stat cartridge file '{}'", path);
    }
    m.file_size_bytes = static_cast<uint64_t>(st.st_size);
    m.created_at = iso8601_utc(st.st_mtime);
    if (options.compute_checksum) {
      CS_ASSIGN_OR_RETURN(std::string sum, sha256_file_hex(path));
      m.checksum = std::move(sum);
    }
  }
  CS_RETURN_IF_ERROR(m.validate());
  return m;
}

}  // namespace cartserve
