#include "cartridge/storage_plugin.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <filesystem>
#include <optional>
#include <string_view>

#include <fmt/format.h>

#include "core/mapped_file.h"
#include "core/sha256.h"

namespace cartserve {
namespace {

static_assert(std::endian::native == std::endian::little,
              "chunk files are little-endian; add byte swapping for big-endian hosts");

namespace fs = std::filesystem;

constexpr char kMagic[8] = {'C', 'S', 'K', 'V', 'C', 'H', 'N', 'K'};
constexpr uint32_t kVersion = 1;
constexpr size_t kFixedHeader = 8 + 4 * 9;  // magic + nine u32 fields
constexpr size_t kDigest = 32;
constexpr uint32_t kMaxDim = 1u << 20;
constexpr size_t kMaxEscapedId = 240;  // leaves room for the file system's 255-byte names

Result<uint32_t> dtype_code(DType t) {
  switch (t) {
    case DType::kF32:
      return 0u;
    case DType::kF16:
      return 1u;
    case DType::kBF16:
      return 2u;
    default:
      break;
  }
  return make_error(ErrorCode::kInvalidArgument, "chunk dtype {} is not a KV dtype", dtype_name(t));
}

std::optional<DType> dtype_from_code(uint32_t c) {
  switch (c) {
    case 0:
      return DType::kF32;
    case 1:
      return DType::kF16;
    case 2:
      return DType::kBF16;
    default:
      return std::nullopt;
  }
}

void put_u32(std::vector<uint8_t>& out, uint32_t v) {
  uint8_t b[4];
  std::memcpy(b, &v, 4);
  out.insert(out.end(), b, b + 4);
}

uint32_t get_u32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

Status check_key(const ChunkKey& key) {
  if (key.cartridge_id.empty()) {
    return make_error(ErrorCode::kInvalidArgument, "chunk key has an empty cartridge id");
  }
  if (key.layer < 0) {
    return make_error(ErrorCode::kInvalidArgument, "chunk key {} has a negative layer",
                      key.to_string());
  }
  return {};
}

Status read_only_error(const char* op, const ChunkKey& key) {
  return make_error(ErrorCode::kPermissionDenied, "storage plugin is read-only: cannot {} chunk {}",
                    op, key.to_string());
}

}  // namespace

std::string ChunkKey::to_string() const {
  return fmt::format("{}/{}", cartridge_id, layer);
}

std::string escape_cartridge_id(const std::string& id) {
  std::string out;
  for (size_t i = 0; i < id.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(id[i]);
    const bool alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
    const bool keep = alnum || c == '_' || c == '-' || (c == '.' && i > 0);
    if (keep) {
      out += static_cast<char>(c);
    } else {
      out += fmt::format("%{:02X}", c);
    }
  }
  return out;
}

// ---- whole-cartridge helpers ----

Status put_cartridge(StoragePlugin& plugin, const std::string& cartridge_id,
                     const CartridgeData& data) {
  CS_RETURN_IF_ERROR(data.validate());
  for (int32_t l = 0; l < data.num_layers; ++l) {
    LayerChunk chunk{data.keys[l], data.values[l], data.num_layers, data.num_frozen_tokens};
    CS_RETURN_IF_ERROR(plugin.put({cartridge_id, l}, chunk));
  }
  return {};
}

Result<CartridgeData> get_cartridge(const StoragePlugin& plugin, const std::string& cartridge_id) {
  CS_ASSIGN_OR_RETURN(LayerChunk first, plugin.get({cartridge_id, 0}));
  CartridgeData d;
  d.num_layers = first.num_layers;
  d.num_kv_heads = static_cast<int32_t>(first.keys.dim(0));
  d.num_tokens = static_cast<int32_t>(first.keys.dim(1));
  d.head_dim = static_cast<int32_t>(first.keys.dim(2));
  d.num_frozen_tokens = first.num_frozen_tokens;
  d.dtype = first.keys.dtype();
  d.keys.push_back(std::move(first.keys));
  d.values.push_back(std::move(first.values));
  for (int32_t l = 1; l < d.num_layers; ++l) {
    CS_ASSIGN_OR_RETURN(LayerChunk c, plugin.get({cartridge_id, l}));
    if (c.num_layers != d.num_layers || c.num_frozen_tokens != d.num_frozen_tokens) {
      return make_error(ErrorCode::kCorrupt,
                        "chunk {}/{} says {} layers and {} frozen tokens, layer 0 says {} and {}",
                        cartridge_id, l, c.num_layers, c.num_frozen_tokens, d.num_layers,
                        d.num_frozen_tokens);
    }
    d.keys.push_back(std::move(c.keys));
    d.values.push_back(std::move(c.values));
  }
  Status valid = d.validate();
  if (!valid.ok()) return valid.with_context("cartridge '" + cartridge_id + "' in storage");
  return d;
}

CartridgeLoader make_storage_loader(std::shared_ptr<const StoragePlugin> plugin) {
  return [plugin = std::move(plugin)](const std::string& id) -> Result<CartridgeData> {
    return get_cartridge(*plugin, id);
  };
}

// ---- DirectoryStoragePlugin ----

Result<std::unique_ptr<DirectoryStoragePlugin>> DirectoryStoragePlugin::open(
    const std::string& root, bool read_only) {
  std::error_code ec;
  if (read_only) {
    if (!fs::is_directory(root, ec)) {
      return make_error(ErrorCode::kNotFound, "storage directory '{}' does not exist", root);
    }
  } else {
    fs::create_directories(root, ec);
    if (ec || !fs::is_directory(root)) {
      return make_error(ErrorCode::kIo, "cannot create storage directory '{}': {}", root,
                        ec.message());
    }
  }
  return std::unique_ptr<DirectoryStoragePlugin>(new DirectoryStoragePlugin(root, read_only));
}

Result<std::string> DirectoryStoragePlugin::chunk_path(const ChunkKey& key) const {
  CS_RETURN_IF_ERROR(check_key(key));
  const std::string dir = escape_cartridge_id(key.cartridge_id);
  if (dir.size() > kMaxEscapedId) {
    return make_error(
        ErrorCode::kInvalidArgument,
        "cartridge id is too long for a directory name ({} bytes escaped, at most {})", dir.size(),
        kMaxEscapedId);
  }
  return fmt::format("{}/{}/layer_{:05d}.kvchunk", root_, dir, key.layer);
}

Result<bool> DirectoryStoragePlugin::contains(const ChunkKey& key) const {
  CS_ASSIGN_OR_RETURN(std::string path, chunk_path(key));
  std::error_code ec;
  return fs::is_regular_file(path, ec);
}

Result<LayerChunk> DirectoryStoragePlugin::get(const ChunkKey& key) const {
  CS_ASSIGN_OR_RETURN(std::string path, chunk_path(key));
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) {
    return make_error(ErrorCode::kNotFound, "chunk {} is not stored ('{}')", key.to_string(), path);
  }
  CS_ASSIGN_OR_RETURN(MappedFile file, MappedFile::open(path));
  const uint8_t* p = file.data();
  const size_t n = file.size();
  auto corrupt = [&](const std::string& why) {
    return make_error(ErrorCode::kCorrupt, "chunk file '{}': {}", path, why);
  };
  if (n < kFixedHeader + kDigest) return corrupt(fmt::format("too short ({} bytes)", n));
  if (std::memcmp(p, kMagic, 8) != 0) return corrupt("bad magic");
  const uint32_t version = get_u32(p + 8);
  if (version != kVersion) return corrupt(fmt::format("unsupported version {}", version));
  // Checksum before trusting any field further.
  const Sha256::Digest want = Sha256::hash(p, n - kDigest);
  if (std::memcmp(want.data(), p + n - kDigest, kDigest) != 0) {
    return corrupt("checksum mismatch (stored " + Sha256::hex([&] {
                     Sha256::Digest d;
                     std::memcpy(d.data(), p + n - kDigest, kDigest);
                     return d;
                   }()) +
                   ", computed " + Sha256::hex(want) + ")");
  }
  const auto dtype = dtype_from_code(get_u32(p + 12));
  if (!dtype) return corrupt(fmt::format("unknown dtype code {}", get_u32(p + 12)));
  const uint32_t layer = get_u32(p + 16);
  const uint32_t num_layers = get_u32(p + 20);
  const uint32_t heads = get_u32(p + 24);
  const uint32_t tokens = get_u32(p + 28);
  const uint32_t dim = get_u32(p + 32);
  const uint32_t frozen = get_u32(p + 36);
  const uint32_t id_len = get_u32(p + 40);
  for (uint32_t v : {num_layers, heads, tokens, dim}) {
    if (v == 0 || v > kMaxDim) return corrupt(fmt::format("dimension {} out of range", v));
  }
  if (frozen > tokens) return corrupt(fmt::format("{} frozen tokens of {}", frozen, tokens));
  if (layer >= num_layers) return corrupt(fmt::format("layer {} of {}", layer, num_layers));
  if (id_len > n) return corrupt("id length exceeds the file");
  const uint64_t tensor_bytes =
      static_cast<uint64_t>(heads) * tokens * dim * dtype_size(*dtype);  // < 2^62
  const uint64_t expect = kFixedHeader + static_cast<uint64_t>(id_len) + 2 * tensor_bytes + kDigest;
  if (expect != n) {
    return corrupt(fmt::format("size {} does not match its header (expected {})", n, expect));
  }
  const std::string id(reinterpret_cast<const char*>(p + kFixedHeader), id_len);
  if (id != key.cartridge_id || static_cast<int32_t>(layer) != key.layer) {
    return corrupt(fmt::format("holds chunk {}/{}, not {}", id, layer, key.to_string()));
  }
  LayerChunk c;
  const Shape shape = {heads, tokens, dim};
  c.keys = Tensor(*dtype, shape);
  c.values = Tensor(*dtype, shape);
  const uint8_t* payload = p + kFixedHeader + id_len;
  std::memcpy(c.keys.raw(), payload, tensor_bytes);
  std::memcpy(c.values.raw(), payload + tensor_bytes, tensor_bytes);
  c.num_layers = static_cast<int32_t>(num_layers);
  c.num_frozen_tokens = static_cast<int32_t>(frozen);
  return c;
}

Status DirectoryStoragePlugin::put(const ChunkKey& key, const LayerChunk& chunk) {
  if (read_only_) return read_only_error("put", key);
  CS_ASSIGN_OR_RETURN(std::string path, chunk_path(key));
  const Tensor& k = chunk.keys;
  const Tensor& v = chunk.values;
  if (k.ndim() != 3 || k.shape() != v.shape() || k.dtype() != v.dtype()) {
    return make_error(ErrorCode::kInvalidArgument,
                      "chunk {}: keys {} {} and values {} {} must be equal [H, T, D] tensors",
                      key.to_string(), dtype_name(k.dtype()), shape_to_string(k.shape()),
                      dtype_name(v.dtype()), shape_to_string(v.shape()));
  }
  for (int64_t d : k.shape()) {
    if (d <= 0 || d > kMaxDim) {
      return make_error(ErrorCode::kInvalidArgument, "chunk {}: shape {} out of range",
                        key.to_string(), shape_to_string(k.shape()));
    }
  }
  if (chunk.num_layers <= key.layer || chunk.num_layers > static_cast<int32_t>(kMaxDim) ||
      chunk.num_frozen_tokens < 0 || chunk.num_frozen_tokens > k.dim(1)) {
    return make_error(ErrorCode::kInvalidArgument,
                      "chunk {}: num_layers {} / num_frozen_tokens {} inconsistent with layer {} "
                      "and {} tokens",
                      key.to_string(), chunk.num_layers, chunk.num_frozen_tokens, key.layer,
                      k.dim(1));
  }
  CS_ASSIGN_OR_RETURN(uint32_t code, dtype_code(k.dtype()));
  std::vector<uint8_t> buf;  // header | id | keys [H, T, D] | values [H, T, D] | sha256
  buf.reserve(kFixedHeader + key.cartridge_id.size() + k.nbytes() + v.nbytes() + kDigest);
  buf.insert(buf.end(), kMagic, kMagic + 8);
  put_u32(buf, kVersion);
  put_u32(buf, code);
  put_u32(buf, static_cast<uint32_t>(key.layer));
  put_u32(buf, static_cast<uint32_t>(chunk.num_layers));
  put_u32(buf, static_cast<uint32_t>(k.dim(0)));
  put_u32(buf, static_cast<uint32_t>(k.dim(1)));
  put_u32(buf, static_cast<uint32_t>(k.dim(2)));
  put_u32(buf, static_cast<uint32_t>(chunk.num_frozen_tokens));
  put_u32(buf, static_cast<uint32_t>(key.cartridge_id.size()));
  buf.insert(buf.end(), key.cartridge_id.begin(), key.cartridge_id.end());
  const auto* kb = static_cast<const uint8_t*>(k.raw());
  const auto* vb = static_cast<const uint8_t*>(v.raw());
  buf.insert(buf.end(), kb, kb + k.nbytes());
  buf.insert(buf.end(), vb, vb + v.nbytes());
  const Sha256::Digest digest = Sha256::hash(buf.data(), buf.size());
  buf.insert(buf.end(), digest.begin(), digest.end());

  std::error_code ec;
  fs::create_directories(fs::path(path).parent_path(), ec);
  if (ec) {
    return make_error(ErrorCode::kIo, "cannot create '{}': {}",
                      fs::path(path).parent_path().string(), ec.message());
  }
  return write_file_atomic(path, buf);
}

Result<bool> DirectoryStoragePlugin::remove(const ChunkKey& key) {
  if (read_only_) return read_only_error("remove", key);
  CS_ASSIGN_OR_RETURN(std::string path, chunk_path(key));
  std::error_code ec;
  const bool removed = fs::remove(path, ec);
  if (ec) return make_error(ErrorCode::kIo, "cannot remove '{}': {}", path, ec.message());
  // Drop the cartridge's folder once its last chunk is gone (fails harmlessly otherwise).
  fs::remove(fs::path(path).parent_path(), ec);
  return removed;
}

Result<std::vector<int32_t>> DirectoryStoragePlugin::layers(const std::string& cartridge_id) const {
  CS_ASSIGN_OR_RETURN(std::string any, chunk_path({cartridge_id, 0}));
  const fs::path dir = fs::path(any).parent_path();
  std::vector<int32_t> out;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return out;
  for (const auto& ent : fs::directory_iterator(dir, ec)) {
    const std::string name = ent.path().filename().string();
    // layer_<digits>.kvchunk; temporary files ("...kvchunk.tmp.*") are skipped.
    constexpr std::string_view kPrefix = "layer_", kSuffix = ".kvchunk";
    if (name.size() <= kPrefix.size() + kSuffix.size() || name.rfind(kPrefix, 0) != 0 ||
        name.substr(name.size() - kSuffix.size()) != kSuffix) {
      continue;
    }
    const std::string digits =
        name.substr(kPrefix.size(), name.size() - kPrefix.size() - kSuffix.size());
    if (digits.size() > 7 ||
        !std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; })) {
      continue;
    }
    out.push_back(std::stoi(digits));
  }
  if (ec) return make_error(ErrorCode::kIo, "cannot list '{}': {}", dir.string(), ec.message());
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace cartserve
