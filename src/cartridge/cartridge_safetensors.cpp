// cartserve's safetensors cartridge format (version 1), as documented in
// cartridge_io.h: "keys.<layer>" / "values.<layer>" [H, T, D], optional
// "token_ids" I32 [T], and a JSON manifest in __metadata__["cartridge"].
// Read through SafetensorsFile (mmap, validated offsets), so loading is one
// copy per tensor and executes nothing.
#include <filesystem>
#include <new>
#include <nlohmann/json.hpp>

#include "cartridge/cartridge_io.h"
#include "formats/safetensors.h"

namespace cartserve {

namespace {

constexpr const char* kFormatKey = "format";
constexpr const char* kFormatValue = "cartserve.cartridge";
constexpr const char* kManifestKey = "cartridge";
constexpr int kFormatVersion = 1;

struct Manifest {
  int64_t num_layers = 0, num_kv_heads = 0, head_dim = 0, num_tokens = 0, num_frozen_tokens = 0;
  DType dtype = DType::kBF16;
  bool has_token_ids = false;
};

Result<Manifest> parse_manifest(const std::string& path, const std::string& text) {
  const auto bad = [&](const std::string& what) {
    return make_error(ErrorCode::kCorrupt, "cartridge '{}': manifest {}", path, what);
  };
  const nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return bad("is not a JSON object");
  if (!j.contains("format_version") || !j["format_version"].is_number_integer()) {
    return bad("has no integer 'format_version'");
  }
  if (j["format_version"].get<int64_t>() != kFormatVersion) {
    return make_error(ErrorCode::kUnsupported,
                      "cartridge '{}': manifest format_version {} (this build reads {})", path,
                      j["format_version"].dump(), kFormatVersion);
  }
  Manifest m;
  for (auto [field, dst] :
       {std::pair{"num_layers", &m.num_layers}, std::pair{"num_kv_heads", &m.num_kv_heads},
        std::pair{"head_dim", &m.head_dim}, std::pair{"num_tokens", &m.num_tokens},
        std::pair{"num_frozen_tokens", &m.num_frozen_tokens}}) {
    if (!j.contains(field) || !j[field].is_number_integer()) {
      return bad(fmt::format("has no integer '{}'", field));
    }
    *dst = j[field].get<int64_t>();
    if (*dst < 0 || *dst > INT32_MAX)
      return bad(fmt::format("'{}' = {} out of range", field, *dst));
  }
  if (!j.contains("dtype") || !j["dtype"].is_string()) return bad("has no string 'dtype'");
  const auto dt = parse_dtype(j["dtype"].get<std::string>());
  if (!dt || (*dt != DType::kBF16 && *dt != DType::kF16 && *dt != DType::kF32)) {
    return bad(fmt::format("dtype '{}' is not bfloat16, float16 or float32",
                           j["dtype"].get<std::string>()));
  }
  m.dtype = *dt;
  if (j.contains("has_token_ids")) {
    if (!j["has_token_ids"].is_boolean()) return bad("'has_token_ids' is not a bool");
    m.has_token_ids = j["has_token_ids"].get<bool>();
  }
  if (m.num_layers == 0 || m.num_kv_heads == 0 || m.head_dim == 0 || m.num_tokens == 0 ||
      m.num_frozen_tokens > m.num_tokens) {
    return bad(fmt::format("dimensions layers={} kv_heads={} head_dim={} tokens={} frozen={}",
                           m.num_layers, m.num_kv_heads, m.head_dim, m.num_tokens,
                           m.num_frozen_tokens));
  }
  return m;
}

}  // namespace

Result<CartridgeData> load_cartridge_safetensors(const std::string& path, CartridgeFileInfo* info) {
  CS_ASSIGN_OR_RETURN(SafetensorsFile f, SafetensorsFile::open(path));
  const auto& meta = f.metadata();
  auto fmt_it = meta.find(kFormatKey);
  auto man_it = meta.find(kManifestKey);
  if (fmt_it == meta.end() || fmt_it->second != kFormatValue || man_it == meta.end()) {
    return make_error(ErrorCode::kCorrupt,
                      "'{}' is a safetensors file but not a cartserve cartridge (no __metadata__ "
                      "\"{}\": \"{}\" with a \"{}\" manifest)",
                      path, kFormatKey, kFormatValue, kManifestKey);
  }
  CS_ASSIGN_OR_RETURN(const Manifest m, parse_manifest(path, man_it->second));

  // Exactly the tensors the manifest announces.
  const size_t expected = static_cast<size_t>(m.num_layers) * 2 + (m.has_token_ids ? 1 : 0);
  if (f.entries().size() != expected) {
    return make_error(
        ErrorCode::kCorrupt, "cartridge '{}': {} tensors, the manifest announces {} ({} layers{})",
        path, f.entries().size(), expected, m.num_layers, m.has_token_ids ? " + token_ids" : "");
  }
  CartridgeData out;
  out.num_layers = static_cast<int32_t>(m.num_layers);
  out.num_kv_heads = static_cast<int32_t>(m.num_kv_heads);
  out.head_dim = static_cast<int32_t>(m.head_dim);
  out.num_tokens = static_cast<int32_t>(m.num_tokens);
  out.num_frozen_tokens = static_cast<int32_t>(m.num_frozen_tokens);
  out.dtype = m.dtype;
  const Shape want = {m.num_kv_heads, m.num_tokens, m.head_dim};
  try {
    for (int64_t l = 0; l < m.num_layers; ++l) {
      for (const char* kind : {"keys", "values"}) {
        const std::string name = fmt::format("{}.{}", kind, l);
        const SafetensorsEntry* e = f.find(name);
        if (!e) {
          return make_error(ErrorCode::kCorrupt, "cartridge '{}': tensor '{}' is missing", path,
                            name);
        }
        if (e->shape != want || e->dtype != m.dtype) {
          return make_error(ErrorCode::kCorrupt,
                            "cartridge '{}': tensor '{}' is {} {}, the manifest says {} {}", path,
                            name, dtype_name(e->dtype), shape_to_string(e->shape),
                            dtype_name(m.dtype), shape_to_string(want));
        }
        Tensor t = tensor_from_view(f.view(*e));  // [H, T, D]
        (kind[0] == 'k' ? out.keys : out.values).push_back(std::move(t));
      }
    }
    if (m.has_token_ids) {
      const SafetensorsEntry* e = f.find("token_ids");
      if (!e || e->dtype != DType::kI32 || e->shape != Shape{m.num_tokens}) {
        return make_error(ErrorCode::kCorrupt,
                          "cartridge '{}': 'token_ids' must be int32 [{}] (has_token_ids is true)",
                          path, m.num_tokens);
      }
      const TensorView v = f.view(*e);
      out.token_ids.resize(static_cast<size_t>(m.num_tokens));
      std::memcpy(out.token_ids.data(), v.data, v.nbytes());
      for (int32_t id : out.token_ids) {
        if (id < 0) {
          return make_error(ErrorCode::kCorrupt, "cartridge '{}': token id {} is negative", path,
                            id);
        }
      }
    }
  } catch (const std::bad_alloc&) {
    return make_error(ErrorCode::kResourceExhausted, "out of memory loading cartridge '{}'", path);
  }
  CS_RETURN_IF_ERROR(out.validate().with_context(fmt::format("cartridge '{}'", path)));
  if (info) {
    info->format = CartridgeFormat::kSafetensors;
    info->layout = fmt::format("cartserve cartridge v{}: keys.<l>/values.<l> [H, T, D]{}",
                               kFormatVersion, m.has_token_ids ? " + token_ids" : "");
    std::error_code ec;
    info->file_bytes = std::filesystem::file_size(path, ec);
    info->pickle_protocol = 0;
  }
  return out;
}

Status save_cartridge_safetensors(const std::string& path, const CartridgeData& data) {
  CS_RETURN_IF_ERROR(data.validate().with_context(fmt::format("saving cartridge '{}'", path)));
  if (data.dtype != DType::kBF16 && data.dtype != DType::kF16 && data.dtype != DType::kF32) {
    return make_error(ErrorCode::kUnsupported, "cartridge dtype {} (bf16, fp16 or fp32 only)",
                      dtype_name(data.dtype));
  }
  std::vector<std::pair<std::string, TensorView>> tensors;
  for (int32_t l = 0; l < data.num_layers; ++l) {
    tensors.emplace_back(fmt::format("keys.{}", l), data.keys[l].view());
    tensors.emplace_back(fmt::format("values.{}", l), data.values[l].view());
  }
  if (!data.token_ids.empty()) {
    tensors.emplace_back("token_ids", TensorView{DType::kI32,
                                                 {static_cast<int64_t>(data.token_ids.size())},
                                                 data.token_ids.data()});
  }
  const nlohmann::json manifest = {
      {"format_version", kFormatVersion},  {"num_layers", data.num_layers},
      {"num_kv_heads", data.num_kv_heads}, {"head_dim", data.head_dim},
      {"num_tokens", data.num_tokens},     {"num_frozen_tokens", data.num_frozen_tokens},
      {"dtype", dtype_name(data.dtype)},   {"has_token_ids", !data.token_ids.empty()},
  };
  return write_safetensors(path, tensors,
                           {{kFormatKey, kFormatValue}, {kManifestKey, manifest.dump()}});
}

}  // namespace cartserve
