#include "cartridge/registry.h"

#include <array>

#include <nlohmann/json.hpp>

namespace cartserve {
namespace {

// Version 1: the catalogue. Later versions append a migration here; the
// numbering is checked by migrate_schema.
constexpr std::string_view kSchemaV1 = R"sql(
CREATE TABLE cartridges (
  cartridge_id       TEXT PRIMARY KEY NOT NULL,
  model_id           TEXT NOT NULL,
  num_layers         INTEGER NOT NULL,
  num_kv_heads       INTEGER NOT NULL,
  head_dim           INTEGER NOT NULL,
  dtype              TEXT NOT NULL,
  num_tokens_raw     INTEGER NOT NULL,
  num_tokens_aligned INTEGER NOT NULL,
  block_size         INTEGER NOT NULL,
  num_blocks         INTEGER NOT NULL,
  has_frozen_prefix  INTEGER NOT NULL,
  num_frozen_tokens  INTEGER,
  checksum           TEXT,
  file_size_bytes    INTEGER,
  created_at         TEXT,
  training_steps     INTEGER,
  source_document    TEXT,
  labels             TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(labels)),
  path               TEXT NOT NULL DEFAULT '',
  manifest_json      TEXT NOT NULL CHECK (json_valid(manifest_json)),
  registered_at      TEXT NOT NULL,
  updated_at         TEXT NOT NULL
);
CREATE INDEX cartridges_by_model ON cartridges(model_id, cartridge_id);
)sql";

constexpr std::array<SqliteMigration, 1> kMigrations = {{{1, kSchemaV1}}};
static_assert(kMigrations.size() == CartridgeRegistry::kSchemaVersion);

constexpr std::string_view kColumns =
    "cartridge_id, model_id, num_layers, num_kv_heads, head_dim, dtype, num_tokens_raw, "
    "num_tokens_aligned, block_size, num_blocks, has_frozen_prefix, num_frozen_tokens, checksum, "
    "file_size_bytes, created_at, training_steps, source_document, labels, path, registered_at, "
    "updated_at";

constexpr std::string_view kNow = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')";

Result<RegistryEntry> entry_from_row(const SqliteStmt& s) {
  RegistryEntry e;
  CartridgeManifest& m = e.manifest;
  m.cartridge_id = s.column_text(0);
  m.model_id = s.column_text(1);
  m.num_layers = static_cast<int32_t>(s.column_int64(2));
  m.num_kv_heads = static_cast<int32_t>(s.column_int64(3));
  m.head_dim = static_cast<int32_t>(s.column_int64(4));
  const std::string dtype = s.column_text(5);
  const auto parsed = parse_dtype(dtype);
  if (!parsed) {
    return make_error(ErrorCode::kCorrupt, "registry row '{}' has unknown dtype '{}'",
                      m.cartridge_id, dtype);
  }
  m.dtype = *parsed;
  m.num_tokens_raw = s.column_int64(6);
  m.num_tokens_aligned = s.column_int64(7);
  m.block_size = static_cast<int32_t>(s.column_int64(8));
  m.num_blocks = s.column_int64(9);
  m.has_frozen_prefix = s.column_int64(10) != 0;
  if (auto v = s.column_optional_int64(11)) m.num_frozen_tokens = static_cast<int32_t>(*v);
  m.checksum = s.column_optional_text(12);
  if (auto v = s.column_optional_int64(13)) m.file_size_bytes = static_cast<uint64_t>(*v);
  m.created_at = s.column_optional_text(14);
  m.training_steps = s.column_optional_int64(15);
  m.source_document = s.column_optional_text(16);
  const std::string labels = s.column_text(17);
  auto j = nlohmann::json::parse(labels, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return make_error(ErrorCode::kCorrupt, "registry row '{}' has malformed labels",
                      m.cartridge_id);
  }
  for (const auto& [k, v] : j.items()) {
    m.labels[k] = v.is_string() ? v.get<std::string>() : v.dump();
  }
  e.path = s.column_text(18);
  e.registered_at = s.column_text(19);
  e.updated_at = s.column_text(20);
  return e;
}

}  // namespace

Result<std::unique_ptr<CartridgeRegistry>> CartridgeRegistry::open(const std::string& db_path,
                                                                   const RegistryOptions& options) {
  CS_ASSIGN_OR_RETURN(SqliteDb db, SqliteDb::open(db_path));
  CS_RETURN_IF_ERROR(db.exec(fmt::format("PRAGMA busy_timeout = {}", options.busy_timeout_ms)));
  // WAL is persistent in the file; ":memory:" databases answer "memory".
  CS_ASSIGN_OR_RETURN(std::string mode, db.query_text("PRAGMA journal_mode = WAL"));
  if (mode != "wal" && mode != "memory") {
    return make_error(ErrorCode::kIo, "registry '{}': cannot enable WAL (journal_mode is '{}')",
                      db_path, mode);
  }
  CS_RETURN_IF_ERROR(db.exec(options.synchronous_full ? "PRAGMA synchronous = FULL"
                                                      : "PRAGMA synchronous = NORMAL"));
  auto version = migrate_schema(db, kMigrations);
  if (!version.ok()) return version.status().with_context("opening registry '" + db_path + "'");
  return std::unique_ptr<CartridgeRegistry>(new CartridgeRegistry(std::move(db)));
}

Status CartridgeRegistry::register_cartridge(const CartridgeManifest& m, const std::string& path) {
  Status valid = m.validate();
  if (!valid.ok()) return valid.with_context("cannot register cartridge '" + m.cartridge_id + "'");
  const std::string labels = nlohmann::json(m.labels).dump();
  const std::string manifest_json = manifest_to_json(m).dump();
  std::lock_guard<std::mutex> lock(mu_);
  CS_ASSIGN_OR_RETURN(
      SqliteStmt st,
      db_.prepare(fmt::format(
          "INSERT INTO cartridges ({}, manifest_json) VALUES "
          "(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, "
          "{}, {}, ?20) "
          "ON CONFLICT(cartridge_id) DO UPDATE SET "
          "model_id = excluded.model_id, num_layers = excluded.num_layers, "
          "num_kv_heads = excluded.num_kv_heads, head_dim = excluded.head_dim, "
          "dtype = excluded.dtype, num_tokens_raw = excluded.num_tokens_raw, "
          "num_tokens_aligned = excluded.num_tokens_aligned, block_size = excluded.block_size, "
          "num_blocks = excluded.num_blocks, has_frozen_prefix = excluded.has_frozen_prefix, "
          "num_frozen_tokens = excluded.num_frozen_tokens, checksum = excluded.checksum, "
          "file_size_bytes = excluded.file_size_bytes, created_at = excluded.created_at, "
          "training_steps = excluded.training_steps, source_document = excluded.source_document, "
          "labels = excluded.labels, path = excluded.path, "
          "manifest_json = excluded.manifest_json, updated_at = excluded.updated_at",
          kColumns, kNow, kNow)));
  CS_RETURN_IF_ERROR(st.bind_text(1, m.cartridge_id));
  CS_RETURN_IF_ERROR(st.bind_text(2, m.model_id));
  CS_RETURN_IF_ERROR(st.bind_int64(3, m.num_layers));
  CS_RETURN_IF_ERROR(st.bind_int64(4, m.num_kv_heads));
  CS_RETURN_IF_ERROR(st.bind_int64(5, m.head_dim));
  CS_RETURN_IF_ERROR(st.bind_text(6, dtype_name(m.dtype)));
  CS_RETURN_IF_ERROR(st.bind_int64(7, m.num_tokens_raw));
  CS_RETURN_IF_ERROR(st.bind_int64(8, m.num_tokens_aligned));
  CS_RETURN_IF_ERROR(st.bind_int64(9, m.block_size));
  CS_RETURN_IF_ERROR(st.bind_int64(10, m.num_blocks));
  CS_RETURN_IF_ERROR(st.bind_int64(11, m.has_frozen_prefix ? 1 : 0));
  CS_RETURN_IF_ERROR(st.bind_optional_int64(
      12, m.num_frozen_tokens ? std::optional<int64_t>(*m.num_frozen_tokens) : std::nullopt));
  CS_RETURN_IF_ERROR(st.bind_optional_text(13, m.checksum));
  CS_RETURN_IF_ERROR(st.bind_optional_int64(
      14, m.file_size_bytes ? std::optional<int64_t>(static_cast<int64_t>(*m.file_size_bytes))
                            : std::nullopt));
  CS_RETURN_IF_ERROR(st.bind_optional_text(15, m.created_at));
  CS_RETURN_IF_ERROR(st.bind_optional_int64(16, m.training_steps));
  CS_RETURN_IF_ERROR(st.bind_optional_text(17, m.source_document));
  CS_RETURN_IF_ERROR(st.bind_text(18, labels));
  CS_RETURN_IF_ERROR(st.bind_text(19, path));
  CS_RETURN_IF_ERROR(st.bind_text(20, manifest_json));
  Status s = st.run();
  if (!s.ok()) return s.with_context("registering cartridge '" + m.cartridge_id + "'");
  return {};
}

Result<bool> CartridgeRegistry::unregister(const std::string& cartridge_id) {
  std::lock_guard<std::mutex> lock(mu_);
  CS_ASSIGN_OR_RETURN(SqliteStmt st, db_.prepare("DELETE FROM cartridges WHERE cartridge_id = ?1"));
  CS_RETURN_IF_ERROR(st.bind_text(1, cartridge_id));
  CS_RETURN_IF_ERROR(st.run());
  return db_.changes() > 0;
}

Result<std::vector<RegistryEntry>> CartridgeRegistry::query_entries(
    const std::string& where, const std::vector<std::string>& args) const {
  std::lock_guard<std::mutex> lock(mu_);
  CS_ASSIGN_OR_RETURN(SqliteStmt st,
                      db_.prepare(fmt::format("SELECT {} FROM cartridges {} ORDER BY cartridge_id",
                                              kColumns, where)));
  for (size_t i = 0; i < args.size(); ++i) {
    CS_RETURN_IF_ERROR(st.bind_text(static_cast<int>(i) + 1, args[i]));
  }
  std::vector<RegistryEntry> out;
  while (true) {
    CS_ASSIGN_OR_RETURN(bool row, st.step());
    if (!row) break;
    CS_ASSIGN_OR_RETURN(RegistryEntry e, entry_from_row(st));
    out.push_back(std::move(e));
  }
  return out;
}

Result<std::optional<RegistryEntry>> CartridgeRegistry::get(const std::string& cartridge_id) const {
  CS_ASSIGN_OR_RETURN(auto rows, query_entries("WHERE cartridge_id = ?1", {cartridge_id}));
  if (rows.empty()) return std::optional<RegistryEntry>();
  return std::optional<RegistryEntry>(std::move(rows.front()));
}

Result<std::vector<RegistryEntry>> CartridgeRegistry::find_by_label(
    const std::string& key, const std::string& value) const {
  // json_each over the labels object: no JSON path built from user text.
  return query_entries(
      "WHERE EXISTS (SELECT 1 FROM json_each(cartridges.labels) AS l "
      "WHERE l.key = ?1 AND l.type = 'text' AND l.value = ?2)",
      {key, value});
}

Result<std::vector<std::string>> CartridgeRegistry::ids_by_label(const std::string& key,
                                                                 const std::string& value) const {
  std::lock_guard<std::mutex> lock(mu_);
  CS_ASSIGN_OR_RETURN(SqliteStmt st,
                      db_.prepare("SELECT cartridge_id FROM cartridges WHERE EXISTS "
                                  "(SELECT 1 FROM json_each(cartridges.labels) AS l "
                                  "WHERE l.key = ?1 AND l.type = 'text' AND l.value = ?2) "
                                  "ORDER BY cartridge_id"));
  CS_RETURN_IF_ERROR(st.bind_text(1, key));
  CS_RETURN_IF_ERROR(st.bind_text(2, value));
  std::vector<std::string> out;
  while (true) {
    CS_ASSIGN_OR_RETURN(bool row, st.step());
    if (!row) break;
    out.push_back(st.column_text(0));
  }
  return out;
}

Result<std::vector<RegistryEntry>> CartridgeRegistry::find_by_model(
    const std::string& model_id) const {
  return query_entries("WHERE model_id = ?1", {model_id});
}

Result<std::vector<RegistryEntry>> CartridgeRegistry::list() const {
  return query_entries("", {});
}

Result<int64_t> CartridgeRegistry::count() const {
  std::lock_guard<std::mutex> lock(mu_);
  return db_.query_int64("SELECT count(*) FROM cartridges");
}

Result<std::string> CartridgeRegistry::integrity_check() const {
  std::lock_guard<std::mutex> lock(mu_);
  CS_ASSIGN_OR_RETURN(SqliteStmt st, db_.prepare("PRAGMA integrity_check"));
  std::string out;
  while (true) {
    CS_ASSIGN_OR_RETURN(bool row, st.step());
    if (!row) break;
    if (!out.empty()) out += "\n";
    out += st.column_text(0);
  }
  return out;
}

}  // namespace cartserve
