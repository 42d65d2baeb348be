// What the server knows about each servable cartridge, in memory: its
// manifest, file, content hash and (for prefilled cartridges) token ids.
// Registration reads and checks the file once: format, dtype, model
// compatibility, checksum. Composites (several cartridges concatenated in
// request order) are entries too, built from their parts. Thread-safe.
#pragma once

#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "cartridge/cartridge.h"
#include "cartridge/loader.h"
#include "cartridge/manifest.h"
#include "core/status.h"

namespace cartserve {

// How a request's cartridge KV is placed (--kv-transfer-config "mode").
//   virtual: the cartridge is positions [0, p); the prompt follows at p.
//   prefix:  the prompt begins with the document; the cartridge provides the
//            KV of its matching leading positions (the seed's behaviour).
enum class CartridgeMode { kVirtual, kPrefix };

struct CatalogEntry {
  std::string cartridge_id;
  std::string path;  // "" for composites
  CartridgeManifest manifest;
  std::string content_hash;        // sha256 hex: the file's, or of the parts' hashes
  std::vector<int32_t> token_ids;  // stored with prefilled cartridges; else empty
  std::vector<std::string> parts;  // composites: member ids, request order
  bool rerotate = false;           // composites: members re-rotated to their positions
  int32_t num_tokens() const { return static_cast<int32_t>(manifest.num_tokens_raw); }
  bool composite() const { return !parts.empty(); }
};

// Reads `path` (and `manifest_path` when given, else <stem>.manifest.json
// beside the file when it exists), checks everything against
// the served model and the block size, and describes it. The manifest's
// cartridge_id is replaced by `cartridge_id` when that is given.
Result<CatalogEntry> inspect_cartridge_file(const std::string& cartridge_id,
                                            const std::string& path,
                                            const std::string& manifest_path,
                                            const ServedModelInfo& model, int32_t block_size);

// The key of the composite of `parts` ("a+b", "a+b@rerotate"). '+' and '@'
// are outside the cartridge id set (cartridge_id.h): no registered id equals
// a composite key, and add() refuses one.
std::string composite_id(const std::vector<std::string>& parts, bool rerotate);

// The residency path of a composite: "composite:" + its id.
std::string composite_path(const std::string& composite_id);

class CartridgeCatalog;
// Loads what a residency path names: a cartridge file, or a composite built
// from its parts' files (re-rotated with `inv_freq`, the model's RoPE table,
// when the composite asks). Thread-safe; the catalog must outlive it.
CartridgeLoader catalog_loader(const CartridgeCatalog& catalog, std::vector<float> inv_freq);

class CartridgeCatalog {
 public:
  // AlreadyExists for a known id; InvalidArgument for an id outside the id
  // set (cartridge_id.h).
  Status add(CatalogEntry entry);
  bool remove(const std::string& cartridge_id);
  std::optional<CatalogEntry> get(const std::string& cartridge_id) const;
  bool contains(const std::string& cartridge_id) const;
  std::vector<CatalogEntry> list() const;  // by id
  // The composite entry for `parts` (created on first use from the parts'
  // entries). NotFound naming an unknown part.
  Result<CatalogEntry> composite(const std::vector<std::string>& parts, bool rerotate);
  // The same entry without adding it (what a request would get; nothing is
  // listed until composite() is called).
  Result<CatalogEntry> preview_composite(const std::vector<std::string>& parts,
                                         bool rerotate) const;

 private:
  Result<CatalogEntry> make_composite_locked(const std::vector<std::string>& parts,
                                             bool rerotate) const;

  mutable std::mutex mu_;
  std::map<std::string, CatalogEntry> entries_;
};

}  // namespace cartserve
