#include "cartridge/catalog.h"

#include <filesystem>

#include "cartridge/cartridge_id.h"
#include "cartridge/cartridge_io.h"
#include "cartridge/compose.h"
#include "core/sha256.h"

namespace cartserve {

Result<CatalogEntry> inspect_cartridge_file(const std::string& cartridge_id,
                                            const std::string& path,
                                            const std::string& manifest_path,
                                            const ServedModelInfo& model, int32_t block_size) {
  if (!cartridge_id.empty()) CS_RETURN_IF_ERROR(validate_cartridge_id(cartridge_id));
  auto data = load_cartridge(path);
  if (!data.ok()) return data.status().with_context("cartridge '" + path + "'");
  CatalogEntry e;
  e.path = path;
  // Without an explicit manifest, one written beside the file (`cartserve
  // cartridge build` names it <stem>.manifest.json) is used when present.
  std::string mpath = manifest_path;
  if (mpath.empty()) {
    const std::filesystem::path p(path);
    const auto beside = p.parent_path() / (p.stem().string() + ".manifest.json");
    std::error_code ec;
    if (std::filesystem::exists(beside, ec)) mpath = beside.string();
  }
  if (!mpath.empty()) {
    const std::string& manifest_path = mpath;
    auto m = read_manifest(manifest_path);
    if (!m.ok()) return m.status().with_context("manifest '" + manifest_path + "'");
    e.manifest = std::move(m).value();
    CS_RETURN_IF_ERROR(e.manifest.validate_against_data(*data).with_context(
        "manifest '" + manifest_path + "' does not describe '" + path + "'"));
    CS_RETURN_IF_ERROR(e.manifest.verify_file(path));
    if (!e.manifest.checksum) {
      CS_ASSIGN_OR_RETURN(std::string sum, sha256_file_hex(path));
      e.manifest.checksum = sum;
    }
  } else {
    ManifestOptions o;
    o.cartridge_id = cartridge_id;
    if (o.cartridge_id.empty()) {
      // The .pt import: the id comes from the file name, which must make a valid one.
      o.cartridge_id = std::filesystem::path(path).stem().string();
      Status valid = validate_cartridge_id(o.cartridge_id, "the id taken from the file name");
      if (!valid.ok()) {
        return Status(valid.code(), valid.message() + "; give the cartridge an explicit id");
      }
    }
    o.block_size = block_size;
    CS_ASSIGN_OR_RETURN(e.manifest, manifest_from_cartridge(*data, path, o));
  }
  if (!cartridge_id.empty()) e.manifest.cartridge_id = cartridge_id;
  if (e.manifest.cartridge_id.empty()) {
    e.manifest.cartridge_id = std::filesystem::path(path).stem().string();
  }
  e.cartridge_id = e.manifest.cartridge_id;
  if (e.manifest.block_size != block_size) e.manifest = e.manifest.realigned(block_size);
  CS_RETURN_IF_ERROR(e.manifest.validate_against_model(model).with_context(
      "cartridge '" + e.cartridge_id + "' does not fit the served model"));
  e.content_hash = *e.manifest.checksum;
  e.token_ids = std::move(data->token_ids);
  return e;
}

namespace {
constexpr std::string_view kCompositePrefix = "composite:";
}  // namespace

std::string composite_path(const std::string& composite_id) {
  return std::string(kCompositePrefix) + composite_id;
}

CartridgeLoader catalog_loader(const CartridgeCatalog& catalog, std::vector<float> inv_freq) {
  return
      [&catalog, inv_freq = std::move(inv_freq)](const std::string& path) -> Result<CartridgeData> {
        if (path.rfind(kCompositePrefix, 0) != 0) return load_cartridge(path);
        const auto entry = catalog.get(path.substr(kCompositePrefix.size()));
        if (!entry || !entry->composite()) {
          return make_error(ErrorCode::kNotFound, "unknown composite '{}'", path);
        }
        std::vector<CartridgeData> parts;
        for (const auto& id : entry->parts) {
          const auto part = catalog.get(id);
          if (!part) return make_error(ErrorCode::kNotFound, "composite part '{}' was removed", id);
          CS_ASSIGN_OR_RETURN(CartridgeData d, load_cartridge(part->path));
          parts.push_back(std::move(d));
        }
        std::vector<const CartridgeData*> ptrs;
        for (const auto& p : parts)
          ptrs.push_back(&p);
        return compose_cartridges(ptrs, entry->rerotate, inv_freq);
      };
}

std::string composite_id(const std::vector<std::string>& parts, bool rerotate) {
  std::string id;
  for (const auto& p : parts)
    id += (id.empty() ? "" : "+") + p;
  return rerotate ? id + "@rerotate" : id;
}

Status CartridgeCatalog::add(CatalogEntry entry) {
  // Composites are made by composite() alone: their keys are outside the id set.
  CS_RETURN_IF_ERROR(validate_cartridge_id(entry.cartridge_id));
  std::lock_guard<std::mutex> lk(mu_);
  if (entries_.count(entry.cartridge_id)) {
    return make_error(ErrorCode::kAlreadyExists, "cartridge '{}' is already registered",
                      entry.cartridge_id);
  }
  const std::string id = entry.cartridge_id;
  entries_.emplace(id, std::move(entry));
  return {};
}

bool CartridgeCatalog::remove(const std::string& cartridge_id) {
  std::lock_guard<std::mutex> lk(mu_);
  return entries_.erase(cartridge_id) > 0;
}

std::optional<CatalogEntry> CartridgeCatalog::get(const std::string& cartridge_id) const {
  std::lock_guard<std::mutex> lk(mu_);
  auto it = entries_.find(cartridge_id);
  if (it == entries_.end()) return std::nullopt;
  return it->second;
}

bool CartridgeCatalog::contains(const std::string& cartridge_id) const {
  std::lock_guard<std::mutex> lk(mu_);
  return entries_.count(cartridge_id) > 0;
}

std::vector<CatalogEntry> CartridgeCatalog::list() const {
  std::lock_guard<std::mutex> lk(mu_);
  std::vector<CatalogEntry> out;
  for (const auto& [id, e] : entries_)
    out.push_back(e);
  return out;
}

Result<CatalogEntry> CartridgeCatalog::composite(const std::vector<std::string>& parts,
                                                 bool rerotate) {
  const std::string id = composite_id(parts, rerotate);
  std::lock_guard<std::mutex> lk(mu_);
  if (auto it = entries_.find(id); it != entries_.end()) return it->second;
  CS_ASSIGN_OR_RETURN(CatalogEntry c, make_composite_locked(parts, rerotate));
  entries_.emplace(id, c);
  return c;
}

Result<CatalogEntry> CartridgeCatalog::preview_composite(const std::vector<std::string>& parts,
                                                         bool rerotate) const {
  const std::string id = composite_id(parts, rerotate);
  std::lock_guard<std::mutex> lk(mu_);
  if (auto it = entries_.find(id); it != entries_.end()) return it->second;
  return make_composite_locked(parts, rerotate);
}

Result<CatalogEntry> CartridgeCatalog::make_composite_locked(const std::vector<std::string>& parts,
                                                             bool rerotate) const {
  const std::string id = composite_id(parts, rerotate);
  CatalogEntry c;
  c.cartridge_id = id;
  c.parts = parts;
  c.rerotate = rerotate;
  Sha256 h;
  h.update(rerotate ? "rerotate" : "as-stored");
  bool all_ids = true;
  for (size_t i = 0; i < parts.size(); ++i) {
    auto it = entries_.find(parts[i]);
    if (it == entries_.end()) {
      return make_error(ErrorCode::kNotFound, "unknown cartridge '{}'", parts[i]);
    }
    if (it->second.composite()) {
      return make_error(ErrorCode::kInvalidArgument, "'{}' is itself a composite", parts[i]);
    }
    const CatalogEntry& p = it->second;
    h.update(p.content_hash);
    if (i == 0) {
      c.manifest = p.manifest;
      c.manifest.num_tokens_raw = 0;
    }
    c.manifest.num_tokens_raw += p.manifest.num_tokens_raw;
    all_ids = all_ids && !p.token_ids.empty();
  }
  c.manifest.cartridge_id = id;
  c.manifest.dtype = DType::kF32;
  c.manifest.checksum.reset();
  c.manifest.file_size_bytes.reset();
  c.manifest = c.manifest.realigned(c.manifest.block_size);
  if (all_ids) {
    for (const auto& p : parts) {
      const auto& ids = entries_.at(p).token_ids;
      c.token_ids.insert(c.token_ids.end(), ids.begin(), ids.end());
    }
  }
  c.content_hash = Sha256::hex(h.finish());
  return c;
}

}  // namespace cartserve
