#include "cartridge/sqlite_db.h"

#include <sqlite3.h>

#include <utility>

namespace cartserve {

Status sqlite_status(int rc, std::string_view what, sqlite3* db) {
  if (rc == SQLITE_OK || rc == SQLITE_DONE || rc == SQLITE_ROW) return {};
  ErrorCode code = ErrorCode::kInternal;
  switch (rc & 0xff) {
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
      code = ErrorCode::kCorrupt;
      break;
    case SQLITE_CANTOPEN:
    case SQLITE_IOERR:
    case SQLITE_FULL:
    case SQLITE_READONLY:
      code = ErrorCode::kIo;
      break;
    case SQLITE_PERM:
    case SQLITE_AUTH:
      code = ErrorCode::kPermissionDenied;
      break;
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
    case SQLITE_NOMEM:
      code = ErrorCode::kResourceExhausted;
      break;
    case SQLITE_CONSTRAINT:
    case SQLITE_MISMATCH:
    case SQLITE_RANGE:
    case SQLITE_TOOBIG:
      code = ErrorCode::kInvalidArgument;
      break;
    default:
      break;
  }
  // sqlite3_errmsg describes the latest call on `db`, which is this one
  // because callers serialise access to the connection.
  const char* msg = db ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
  return make_error(code, "{}: {} ({})", what, msg ? msg : "?", sqlite3_errstr(rc));
}

// ---- SqliteStmt ----

SqliteStmt::~SqliteStmt() {
  if (stmt_) sqlite3_finalize(stmt_);
}

SqliteStmt::SqliteStmt(SqliteStmt&& o) noexcept
    : db_(std::exchange(o.db_, nullptr)), stmt_(std::exchange(o.stmt_, nullptr)) {}

SqliteStmt& SqliteStmt::operator=(SqliteStmt&& o) noexcept {
  if (this != &o) {
    if (stmt_) sqlite3_finalize(stmt_);
    db_ = std::exchange(o.db_, nullptr);
    stmt_ = std::exchange(o.stmt_, nullptr);
  }
  return *this;
}

Status SqliteStmt::bind_text(int index, std::string_view value) {
  return sqlite_status(
      sqlite3_bind_text64(stmt_, index, value.data(), value.size(), SQLITE_TRANSIENT, SQLITE_UTF8),
      "bind", db_);
}

Status SqliteStmt::bind_int64(int index, int64_t value) {
  return sqlite_status(sqlite3_bind_int64(stmt_, index, value), "bind", db_);
}

Status SqliteStmt::bind_null(int index) {
  return sqlite_status(sqlite3_bind_null(stmt_, index), "bind", db_);
}

Status SqliteStmt::bind_optional_text(int index, const std::optional<std::string>& value) {
  return value ? bind_text(index, *value) : bind_null(index);
}

Status SqliteStmt::bind_optional_int64(int index, const std::optional<int64_t>& value) {
  return value ? bind_int64(index, *value) : bind_null(index);
}

Result<bool> SqliteStmt::step() {
  const int rc = sqlite3_step(stmt_);
  if (rc == SQLITE_ROW) return true;
  if (rc == SQLITE_DONE) return false;
  const char* sql = sqlite3_sql(stmt_);
  std::string what = "executing '";
  what += sql ? std::string_view(sql).substr(0, 80) : std::string_view("?");
  what += "'";
  return sqlite_status(rc, what, db_);
}

Status SqliteStmt::run() {
  while (true) {
    CS_ASSIGN_OR_RETURN(bool row, step());
    if (!row) return {};
  }
}

void SqliteStmt::reset() {
  sqlite3_reset(stmt_);
  sqlite3_clear_bindings(stmt_);
}

bool SqliteStmt::column_is_null(int col) const {
  return sqlite3_column_type(stmt_, col) == SQLITE_NULL;
}

int64_t SqliteStmt::column_int64(int col) const {
  return sqlite3_column_int64(stmt_, col);
}

std::string SqliteStmt::column_text(int col) const {
  const auto* p = sqlite3_column_text(stmt_, col);
  const int n = sqlite3_column_bytes(stmt_, col);
  return p ? std::string(reinterpret_cast<const char*>(p), static_cast<size_t>(n)) : std::string();
}

std::optional<int64_t> SqliteStmt::column_optional_int64(int col) const {
  if (column_is_null(col)) return std::nullopt;
  return column_int64(col);
}

std::optional<std::string> SqliteStmt::column_optional_text(int col) const {
  if (column_is_null(col)) return std::nullopt;
  return column_text(col);
}

// ---- SqliteDb ----

SqliteDb::~SqliteDb() {
  if (db_) sqlite3_close_v2(db_);
}

SqliteDb::SqliteDb(SqliteDb&& o) noexcept
    : db_(std::exchange(o.db_, nullptr)), path_(std::move(o.path_)) {}

SqliteDb& SqliteDb::operator=(SqliteDb&& o) noexcept {
  if (this != &o) {
    if (db_) sqlite3_close_v2(db_);
    db_ = std::exchange(o.db_, nullptr);
    path_ = std::move(o.path_);
  }
  return *this;
}

Result<SqliteDb> SqliteDb::open(const std::string& path) {
  sqlite3* raw = nullptr;
  const int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX;
  const int rc = sqlite3_open_v2(path.c_str(), &raw, flags, nullptr);
  SqliteDb db;
  db.db_ = raw;  // closed by ~SqliteDb even when opening failed
  db.path_ = path;
  if (rc != SQLITE_OK) {
    return sqlite_status(rc, "opening registry database '" + path + "'", raw);
  }
  sqlite3_extended_result_codes(raw, 1);
  return db;
}

Status SqliteDb::exec(std::string_view sql) {
  char* err = nullptr;
  const std::string text(sql);
  const int rc = sqlite3_exec(db_, text.c_str(), nullptr, nullptr, &err);
  if (rc == SQLITE_OK) return {};
  sqlite3_free(err);  // the same text as sqlite3_errmsg, which sqlite_status reports
  return sqlite_status(rc, "executing '" + text.substr(0, 80) + "'", db_);
}

Result<SqliteStmt> SqliteDb::prepare(std::string_view sql) {
  sqlite3_stmt* stmt = nullptr;
  const int rc = sqlite3_prepare_v2(db_, sql.data(), static_cast<int>(sql.size()), &stmt, nullptr);
  if (rc != SQLITE_OK) {
    if (stmt) sqlite3_finalize(stmt);
    return sqlite_status(rc, "preparing '" + std::string(sql.substr(0, 80)) + "'", db_);
  }
  return SqliteStmt(db_, stmt);
}

Result<std::string> SqliteDb::query_text(std::string_view sql) {
  CS_ASSIGN_OR_RETURN(SqliteStmt stmt, prepare(sql));
  CS_ASSIGN_OR_RETURN(bool row, stmt.step());
  if (!row) {
    return make_error(ErrorCode::kInternal, "'{}' returned no row", sql.substr(0, 80));
  }
  return stmt.column_text(0);
}

Result<int64_t> SqliteDb::query_int64(std::string_view sql) {
  CS_ASSIGN_OR_RETURN(SqliteStmt stmt, prepare(sql));
  CS_ASSIGN_OR_RETURN(bool row, stmt.step());
  if (!row) {
    return make_error(ErrorCode::kInternal, "'{}' returned no row", sql.substr(0, 80));
  }
  return stmt.column_int64(0);
}

int64_t SqliteDb::changes() const {
  return sqlite3_changes64(db_);
}

// ---- SqliteTransaction ----

SqliteTransaction::SqliteTransaction(SqliteDb& db) : db_(db) {
  begin_status_ = db_.exec("BEGIN IMMEDIATE");
  open_ = begin_status_.ok();
}

SqliteTransaction::~SqliteTransaction() {
  if (open_) (void)db_.exec("ROLLBACK");
}

Status SqliteTransaction::commit() {
  if (!open_) return make_error(ErrorCode::kFailedPrecondition, "no open transaction to commit");
  Status s = db_.exec("COMMIT");
  if (s.ok()) open_ = false;  // on failure the destructor rolls back
  return s;
}

// ---- migrations ----

Result<int> read_schema_version(SqliteDb& db) {
  CS_ASSIGN_OR_RETURN(int64_t exists,
                      db.query_int64("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND "
                                     "name = 'schema_version'"));
  if (exists == 0) return 0;
  CS_ASSIGN_OR_RETURN(SqliteStmt stmt, db.prepare("SELECT version FROM schema_version"));
  std::optional<int64_t> version;
  int rows = 0;
  while (true) {
    CS_ASSIGN_OR_RETURN(bool row, stmt.step());
    if (!row) break;
    ++rows;
    version = stmt.column_optional_int64(0);
  }
  if (rows != 1 || !version || *version < 0 || *version > 1'000'000) {
    return make_error(ErrorCode::kCorrupt,
                      "database '{}': table schema_version must hold exactly one non-negative "
                      "version (found {} rows)",
                      db.path(), rows);
  }
  return static_cast<int>(*version);
}

Result<int> migrate_schema(SqliteDb& db, std::span<const SqliteMigration> migrations) {
  for (size_t i = 0; i < migrations.size(); ++i) {
    if (migrations[i].to_version != static_cast<int>(i) + 1) {
      return make_error(ErrorCode::kInternal, "schema migration {} is numbered {}", i + 1,
                        migrations[i].to_version);
    }
  }
  const int latest = static_cast<int>(migrations.size());
  CS_ASSIGN_OR_RETURN(int version, read_schema_version(db));
  if (version > latest) {
    return make_error(ErrorCode::kFailedPrecondition,
                      "database '{}' has schema version {}, newer than this build supports ({})",
                      db.path(), version, latest);
  }
  while (version < latest) {
    SqliteTransaction tx(db);
    CS_RETURN_IF_ERROR(tx.status());
    // Another process may have migrated between our read and BEGIN IMMEDIATE.
    CS_ASSIGN_OR_RETURN(version, read_schema_version(db));
    if (version >= latest) break;
    const SqliteMigration& m = migrations[static_cast<size_t>(version)];
    Status s = db.exec(m.sql);
    if (!s.ok()) {
      return s.with_context(fmt::format("schema migration to version {}", m.to_version));
    }
    CS_RETURN_IF_ERROR(
        db.exec("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL); "
                "DELETE FROM schema_version;"));
    CS_ASSIGN_OR_RETURN(SqliteStmt ins,
                        db.prepare("INSERT INTO schema_version(version) VALUES (?)"));
    CS_RETURN_IF_ERROR(ins.bind_int64(1, m.to_version));
    CS_RETURN_IF_ERROR(ins.run());
    CS_RETURN_IF_ERROR(tx.commit());
    version = m.to_version;
  }
  return version;
}

}  // namespace cartserve
