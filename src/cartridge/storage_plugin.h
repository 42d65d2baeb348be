// Storage-tier plugins: cartridge KV kept outside the process, keyed by
// (cartridge_id, layer) -- the role LMCache plays in the reference system.
// The serving side opens plugins read-only (put/remove refused); tools that
// build cartridges open them writable.
//
// DirectoryStoragePlugin is the first backend: one file per (id, layer)
//   <root>/<escaped id>/layer_<NNNNN>.kvchunk
// written atomically (temporary file + rename), each ending in a SHA-256 of
// its contents that get() verifies. Chunk file, little-endian:
//   "CSKVCHNK" | u32 version=1 | u32 dtype (0 f32, 1 f16, 2 bf16) | u32 layer
//   | u32 num_layers | u32 num_kv_heads | u32 num_tokens | u32 head_dim
//   | u32 num_frozen_tokens | u32 id_len | id bytes
//   | keys [H, T, D] | values [H, T, D] | sha256(all previous bytes)
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "cartridge/cartridge.h"
#include "cartridge/loader.h"
#include "core/status.h"
#include "core/tensor.h"

namespace cartserve {

struct ChunkKey {
  std::string cartridge_id;
  int32_t layer = 0;
  bool operator==(const ChunkKey&) const = default;
  std::string to_string() const;  // "doc_a/3"
};

// One layer of one cartridge, with enough context to rebuild the whole.
struct LayerChunk {
  Tensor keys;                    // [num_kv_heads, num_tokens, head_dim]
  Tensor values;                  // [num_kv_heads, num_tokens, head_dim], same dtype as keys
  int32_t num_layers = 0;         // layers of the whole cartridge
  int32_t num_frozen_tokens = 0;  // of the whole cartridge
};

class StoragePlugin {
 public:
  virtual ~StoragePlugin() = default;
  virtual const char* name() const = 0;
  virtual bool read_only() const = 0;
  virtual Result<bool> contains(const ChunkKey& key) const = 0;
  // NotFound when absent; Corrupt when the stored chunk fails its checks.
  virtual Result<LayerChunk> get(const ChunkKey& key) const = 0;
  // Replaces any existing chunk. PermissionDenied when read-only.
  virtual Status put(const ChunkKey& key, const LayerChunk& chunk) = 0;
  // false when absent. PermissionDenied when read-only.
  virtual Result<bool> remove(const ChunkKey& key) = 0;
};

// Writes every layer of `data` under `cartridge_id`.
Status put_cartridge(StoragePlugin& plugin, const std::string& cartridge_id,
                     const CartridgeData& data);
// Reads every layer (layer 0 tells how many) and checks they agree.
Result<CartridgeData> get_cartridge(const StoragePlugin& plugin, const std::string& cartridge_id);

// A loader over `plugin` for the store and the residency manager: the
// "path" it is given is the cartridge id inside the plugin.
CartridgeLoader make_storage_loader(std::shared_ptr<const StoragePlugin> plugin);

class DirectoryStoragePlugin final : public StoragePlugin {
 public:
  // Read-only: `root` must exist. Writable: `root` is created if missing.
  static Result<std::unique_ptr<DirectoryStoragePlugin>> open(const std::string& root,
                                                              bool read_only);

  const char* name() const override { return "directory"; }
  bool read_only() const override { return read_only_; }
  Result<bool> contains(const ChunkKey& key) const override;
  Result<LayerChunk> get(const ChunkKey& key) const override;
  Status put(const ChunkKey& key, const LayerChunk& chunk) override;
  Result<bool> remove(const ChunkKey& key) override;

  // Where `key` lives (InvalidArgument for an empty/too long id or a negative layer).
  Result<std::string> chunk_path(const ChunkKey& key) const;
  // Stored layers of `cartridge_id`, ascending.
  Result<std::vector<int32_t>> layers(const std::string& cartridge_id) const;
  const std::string& root() const { return root_; }

 private:
  DirectoryStoragePlugin(std::string root, bool read_only)
      : root_(std::move(root)), read_only_(read_only) {}
  std::string root_;
  bool read_only_;
};

// File-name-safe form of an id: [A-Za-z0-9_.-] kept (a leading '.' is
// escaped), every other byte as %XX. Injective, so ids never collide.
std::string escape_cartridge_id(const std::string& id);

}  // namespace cartserve
