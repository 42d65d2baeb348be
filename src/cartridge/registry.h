// Persistent cartridge catalogue in SQLite: one row per cartridge with the
// manifest fields as columns, labels as JSON text, the file path, the
// manifest JSON and registration timestamps.
//
// NOTE (threads): one connection guarded by one mutex. Catalogue calls take
// microseconds and writes are rare, so serialising them costs nothing that
// matters, while a connection per thread would need thread-local lifetime
// management and would still serialise writers on SQLite's own lock. The
// mutex also keeps each statement's prepare/step/reset and the error text
// (sqlite3_errmsg) on one thread. Other processes (an admin tool) can read
// the same file concurrently thanks to WAL mode.
//
// NOTE (durability): WAL + synchronous=FULL: a committed registration
// survives a process kill and a power loss; a process killed mid-write
// leaves the database consistent (the partial transaction is rolled back on
// the next open).
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "cartridge/manifest.h"
#include "cartridge/sqlite_db.h"
#include "core/status.h"

namespace cartserve {

struct RegistryOptions {
  int busy_timeout_ms = 5000;  // wait this long for another process's write lock
  bool synchronous_full =
      true;  // false: synchronous=NORMAL (may lose the last commits on power loss)
};

struct RegistryEntry {
  CartridgeManifest manifest;
  std::string path;           // cartridge file ("" if registered without one)
  std::string registered_at;  // first registration, ISO 8601 UTC with milliseconds
  std::string updated_at;     // latest registration
};

class CartridgeRegistry {
 public:
  // Schema version this build creates and reads.
  static constexpr int kSchemaVersion = 1;

  // Opens or creates the database at `db_path` (":memory:" for a private
  // in-memory one), sets WAL and the busy timeout and migrates the schema.
  static Result<std::unique_ptr<CartridgeRegistry>> open(const std::string& db_path,
                                                         const RegistryOptions& options = {});

  // Inserts, or replaces every field of an existing id (keeping its
  // registered_at). The manifest must pass validate().
  Status register_cartridge(const CartridgeManifest& manifest, const std::string& path);
  // false when the id was not registered.
  Result<bool> unregister(const std::string& cartridge_id);
  // nullopt when the id is not registered.
  Result<std::optional<RegistryEntry>> get(const std::string& cartridge_id) const;
  // Entries whose labels[key] == value, ordered by cartridge_id (byte order).
  Result<std::vector<RegistryEntry>> find_by_label(const std::string& key,
                                                   const std::string& value) const;
  // Ids only, in the same order (what the label router needs).
  Result<std::vector<std::string>> ids_by_label(const std::string& key,
                                                const std::string& value) const;
  // Entries for `model_id` (exact match), ordered by cartridge_id.
  Result<std::vector<RegistryEntry>> find_by_model(const std::string& model_id) const;
  // Every entry, ordered by cartridge_id.
  Result<std::vector<RegistryEntry>> list() const;
  Result<int64_t> count() const;

  // "ok" for a sound database, otherwise SQLite's list of problems.
  Result<std::string> integrity_check() const;
  const std::string& path() const { return db_.path(); }

 private:
  explicit CartridgeRegistry(SqliteDb db) : db_(std::move(db)) {}
  Result<std::vector<RegistryEntry>> query_entries(const std::string& where,
                                                   const std::vector<std::string>& args) const;

  mutable std::mutex mu_;
  mutable SqliteDb db_;  // guarded by mu_
};

}  // namespace cartserve
