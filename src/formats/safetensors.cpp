// safetensors reader: header validation, zero-copy views over the mapping,
// and sharded checkpoint folders (model.safetensors.index.json).
//
// NOTE: after open() every entry satisfies begin <= end <= buffer size,
// end - begin == numel * dtype_size, and no two entries overlap, so view()
// never points outside the mapping. Gaps between tensors are tolerated (the
// reference reader rejects them; nothing here depends on their absence).
#include "formats/safetensors.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>

namespace cartserve {
namespace {

using nlohmann::json;

// The reference implementation's bound on the header length (100 MB).
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

// Valid safetensors dtypes that cartserve does not read.
bool is_known_unsupported_dtype(std::string_view s) {
  static constexpr std::string_view kNames[] = {"U16",     "U32",     "U64",        "F8_E4M3",
                                                "F8_E5M2", "F8_E8M0", "F4",         "F6_E2M3",
                                                "F6_E3M2", "C64",     "F8_E4M3FNUZ"};
  return std::find(std::begin(kNames), std::end(kNames), s) != std::end(kNames);
}

// Non-negative integer from a JSON value (rejects negatives and floats).
bool as_u64(const json& v, uint64_t* out) {
  if (!v.is_number_unsigned()) return false;
  *out = v.get<uint64_t>();
  return true;
}

Status parse_entry(const std::string& name, const json& v, uint64_t buffer_size,
                   SafetensorsEntry* e) {
  if (!v.is_object()) return make_error(ErrorCode::kCorrupt, "entry is not a JSON object");
  const auto dt = v.find("dtype");
  const auto sh = v.find("shape");
  const auto off = v.find("data_offsets");
  if (dt == v.end() || sh == v.end() || off == v.end()) {
    return make_error(ErrorCode::kCorrupt, "entry lacks one of dtype, shape, data_offsets");
  }
  if (!dt->is_string()) return make_error(ErrorCode::kCorrupt, "dtype is not a string");
  const std::string dtype_str = dt->get<std::string>();
  const auto dtype = parse_safetensors_dtype(dtype_str);
  if (!dtype) {
    if (is_known_unsupported_dtype(dtype_str)) {
      return make_error(ErrorCode::kUnsupported, "dtype '{}' is not supported", dtype_str);
    }
    return make_error(ErrorCode::kCorrupt, "unknown dtype '{}'", dtype_str);
  }
  if (!sh->is_array()) return make_error(ErrorCode::kCorrupt, "shape is not an array");
  e->name = name;
  e->dtype = *dtype;
  uint64_t numel = 1;
  for (const json& d : *sh) {
    uint64_t n = 0;
    if (!as_u64(d, &n) || n > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return make_error(ErrorCode::kCorrupt, "shape {} has an entry that is not a size",
                        sh->dump());
    }
    if (n != 0 && numel > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) / n) {
      return make_error(ErrorCode::kCorrupt, "shape {} overflows", sh->dump());
    }
    numel *= n;
    e->shape.push_back(static_cast<int64_t>(n));
  }
  if (!off->is_array() || off->size() != 2 || !as_u64((*off)[0], &e->begin) ||
      !as_u64((*off)[1], &e->end)) {
    return make_error(ErrorCode::kCorrupt, "data_offsets {} is not [begin, end]", off->dump());
  }
  if (e->begin > e->end || e->end > buffer_size) {
    return make_error(ErrorCode::kCorrupt,
                      "data_offsets [{}, {}] lie outside the data buffer of {} bytes (truncated "
                      "file?)",
                      e->begin, e->end, buffer_size);
  }
  const uint64_t elem = dtype_size(*dtype);
  if (numel > std::numeric_limits<uint64_t>::max() / elem || numel * elem != e->end - e->begin) {
    return make_error(ErrorCode::kCorrupt,
                      "data_offsets [{}, {}] span {} bytes, but shape {} of {} needs {} bytes",
                      e->begin, e->end, e->end - e->begin, shape_to_string(e->shape), dtype_str,
                      numel > std::numeric_limits<uint64_t>::max() / elem
                          ? std::string("more than 2^64")
                          : std::to_string(numel * elem));
  }
  return {};
}

}  // namespace

const char* safetensors_dtype_name(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return "F32";
    case DType::kF16:
      return "F16";
    case DType::kBF16:
      return "BF16";
    case DType::kF64:
      return "F64";
    case DType::kI8:
      return "I8";
    case DType::kU8:
      return "U8";
    case DType::kI16:
      return "I16";
    case DType::kI32:
      return "I32";
    case DType::kI64:
      return "I64";
    case DType::kBool:
      return "BOOL";
  }
  return "?";
}

std::optional<DType> parse_safetensors_dtype(std::string_view name) {
  for (DType t : {DType::kF32, DType::kF16, DType::kBF16, DType::kF64, DType::kI8, DType::kU8,
                  DType::kI16, DType::kI32, DType::kI64, DType::kBool}) {
    if (name == safetensors_dtype_name(t)) return t;
  }
  return std::nullopt;
}

Result<SafetensorsFile> SafetensorsFile::open(const std::string& path) {
  CS_ASSIGN_OR_RETURN(MappedFile mapped, MappedFile::open(path));
  auto fail = [&](const Status& s) {
    return s.with_context(fmt::format("safetensors '{}'", path));
  };
  SafetensorsFile f;
  f.file_ = std::move(mapped);
  const uint64_t size = f.file_.size();
  if (size < 8) {
    return fail(make_error(ErrorCode::kCorrupt,
                           "file of {} bytes is too small for the 8-byte header length", size));
  }
  uint64_t header_len = 0;
  std::memcpy(&header_len, f.file_.data(), 8);  // little-endian u64
  if (header_len > size - 8) {
    return fail(make_error(ErrorCode::kCorrupt,
                           "header length {} goes beyond the end of the file ({} bytes; truncated "
                           "or not a safetensors file?)",
                           header_len, size));
  }
  if (header_len > kMaxHeaderBytes) {
    return fail(make_error(ErrorCode::kCorrupt, "header length {} exceeds the limit of {} bytes",
                           header_len, kMaxHeaderBytes));
  }
  f.data_start_ = 8 + header_len;
  const uint64_t buffer_size = size - f.data_start_;
  const char* header = reinterpret_cast<const char*>(f.file_.data() + 8);

  json doc;
  try {
    doc = json::parse(header, header + header_len);
  } catch (const json::exception& e) {
    return fail(make_error(ErrorCode::kCorrupt, "header is not valid JSON: {}", e.what()));
  }
  if (!doc.is_object()) {
    return fail(make_error(ErrorCode::kCorrupt, "header is JSON but not an object"));
  }
  for (const auto& [name, value] : doc.items()) {
    if (name == "__metadata__") {
      if (!value.is_object()) {
        return fail(make_error(ErrorCode::kCorrupt, "__metadata__ is not an object"));
      }
      for (const auto& [k, v] : value.items()) {
        if (!v.is_string()) {
          return fail(
              make_error(ErrorCode::kCorrupt, "__metadata__ value '{}' is not a string", k));
        }
        f.metadata_[k] = v.get<std::string>();
      }
      continue;
    }
    SafetensorsEntry e;
    Status s = parse_entry(name, value, buffer_size, &e);
    if (!s.ok()) return fail(s.with_context(fmt::format("tensor '{}'", name)));
    f.entries_.push_back(std::move(e));
  }
  // Data order; an empty tensor sorts before a non-empty one at the same offset.
  std::sort(f.entries_.begin(), f.entries_.end(), [](const auto& a, const auto& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  for (size_t i = 1; i < f.entries_.size(); ++i) {
    const SafetensorsEntry& p = f.entries_[i - 1];
    const SafetensorsEntry& c = f.entries_[i];
    if (p.end > c.begin) {
      return fail(make_error(ErrorCode::kCorrupt,
                             "data of tensors '{}' [{}, {}) and '{}' [{}, {}) overlap", p.name,
                             p.begin, p.end, c.name, c.begin, c.end));
    }
  }
  for (size_t i = 0; i < f.entries_.size(); ++i)
    f.index_.emplace(f.entries_[i].name, i);
  return f;
}

const SafetensorsEntry* SafetensorsFile::find(std::string_view name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &entries_[it->second];
}

TensorView SafetensorsFile::view(const SafetensorsEntry& e) const {
  TensorView v;
  v.dtype = e.dtype;
  v.shape = e.shape;
  // Entries come from open(): data_start_ + end <= size.
  v.data = file_.data() ? file_.data() + data_start_ + e.begin : nullptr;
  return v;
}

Result<SafetensorsSet> SafetensorsSet::open_dir(const std::string& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    return make_error(ErrorCode::kNotFound, "safetensors checkpoint folder '{}' does not exist",
                      dir);
  }
  SafetensorsSet set;
  set.dir_ = dir;
  const fs::path index_path = fs::path(dir) / "model.safetensors.index.json";
  const fs::path single_path = fs::path(dir) / "model.safetensors";

  if (fs::exists(index_path, ec)) {
    const std::string ip = index_path.string();
    CS_ASSIGN_OR_RETURN(std::string text, read_file(ip));
    json doc;
    try {
      doc = json::parse(text);
    } catch (const json::exception& e) {
      return make_error(ErrorCode::kCorrupt, "'{}' is not valid JSON: {}", ip, e.what());
    }
    if (!doc.is_object() || !doc.contains("weight_map") || !doc["weight_map"].is_object()) {
      return make_error(ErrorCode::kCorrupt, "'{}' has no \"weight_map\" object", ip);
    }
    std::map<std::string, size_t> shard_index;                // file name -> index in files_
    std::vector<std::pair<std::string, std::string>> wanted;  // tensor, shard
    for (const auto& [tensor, shard_v] : doc["weight_map"].items()) {
      if (!shard_v.is_string()) {
        return make_error(ErrorCode::kCorrupt, "'{}': weight_map entry '{}' is not a file name", ip,
                          tensor);
      }
      const std::string shard = shard_v.get<std::string>();
      // Shards live beside the index: plain file names only.
      if (shard.empty() || shard == "." || shard == ".." || shard.find('/') != std::string::npos ||
          shard.find('\\') != std::string::npos) {
        return make_error(ErrorCode::kCorrupt,
                          "'{}': weight_map entry '{}' names '{}', which is not a plain file name",
                          ip, tensor, shard);
      }
      if (!shard_index.count(shard)) {
        const fs::path sp = fs::path(dir) / shard;
        if (!fs::exists(sp, ec)) {
          return make_error(ErrorCode::kNotFound,
                            "shard '{}' listed in '{}' (tensor '{}') is missing", shard, ip,
                            tensor);
        }
        CS_ASSIGN_OR_RETURN(SafetensorsFile sf, SafetensorsFile::open(sp.string()));
        shard_index.emplace(shard, set.files_.size());
        set.files_.push_back(std::make_unique<SafetensorsFile>(std::move(sf)));
      }
      wanted.emplace_back(tensor, shard);
    }
    for (const auto& [tensor, shard] : wanted) {
      const size_t fi = shard_index.at(shard);
      if (!set.files_[fi]->find(tensor)) {
        return make_error(ErrorCode::kCorrupt,
                          "'{}' puts tensor '{}' in shard '{}', but that shard does not hold it",
                          ip, tensor, shard);
      }
      set.where_.emplace(tensor, fi);
    }
    return set;
  }
  if (fs::exists(single_path, ec)) {
    CS_ASSIGN_OR_RETURN(SafetensorsFile sf, SafetensorsFile::open(single_path.string()));
    for (const SafetensorsEntry& e : sf.entries())
      set.where_.emplace(e.name, 0);
    set.files_.push_back(std::make_unique<SafetensorsFile>(std::move(sf)));
    return set;
  }
  return make_error(ErrorCode::kNotFound,
                    "folder '{}' has neither model.safetensors nor model.safetensors.index.json",
                    dir);
}

Result<TensorView> SafetensorsSet::get(std::string_view name) const {
  auto it = where_.find(name);
  if (it == where_.end()) {
    return make_error(ErrorCode::kNotFound, "tensor '{}' not found in safetensors checkpoint '{}'",
                      name, dir_);
  }
  const SafetensorsFile& f = *files_[it->second];
  return f.view(*f.find(name));
}

bool SafetensorsSet::contains(std::string_view name) const {
  return where_.count(name) > 0;
}

std::vector<std::string> SafetensorsSet::names() const {
  std::vector<std::string> out;
  out.reserve(where_.size());
  for (const auto& [name, idx] : where_)
    out.push_back(name);
  return out;
}

}  // namespace cartserve
