// Thin RAII layer over libsqlite3: a connection, prepared statements, an
// IMMEDIATE transaction guard and numbered schema migrations. Every SQLite
// failure becomes a Status carrying SQLite's own error text.
//
// NOTE: none of these types lock. A connection and its statements must be
// used by one thread at a time (the registry holds a mutex around them).
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "core/status.h"

struct sqlite3;
struct sqlite3_stmt;

namespace cartserve {

// Status for SQLite result code `rc`: "<what>: <sqlite message> (<code name>)".
Status sqlite_status(int rc, std::string_view what, sqlite3* db);

class SqliteStmt {
 public:
  SqliteStmt() = default;
  SqliteStmt(sqlite3* db, sqlite3_stmt* stmt) : db_(db), stmt_(stmt) {}
  ~SqliteStmt();
  SqliteStmt(SqliteStmt&& o) noexcept;
  SqliteStmt& operator=(SqliteStmt&& o) noexcept;
  SqliteStmt(const SqliteStmt&) = delete;
  SqliteStmt& operator=(const SqliteStmt&) = delete;

  // Parameters are 1-based, as in SQLite.
  Status bind_text(int index, std::string_view value);
  Status bind_int64(int index, int64_t value);
  Status bind_null(int index);
  Status bind_optional_text(int index, const std::optional<std::string>& value);
  Status bind_optional_int64(int index, const std::optional<int64_t>& value);

  // true: a row is available; false: the statement is done.
  Result<bool> step();
  // Runs to completion, ignoring rows.
  Status run();
  void reset();

  // Columns are 0-based.
  bool column_is_null(int col) const;
  int64_t column_int64(int col) const;
  std::string column_text(int col) const;
  std::optional<int64_t> column_optional_int64(int col) const;
  std::optional<std::string> column_optional_text(int col) const;

 private:
  sqlite3* db_ = nullptr;
  sqlite3_stmt* stmt_ = nullptr;
};

class SqliteDb {
 public:
  SqliteDb() = default;
  ~SqliteDb();
  SqliteDb(SqliteDb&& o) noexcept;
  SqliteDb& operator=(SqliteDb&& o) noexcept;
  SqliteDb(const SqliteDb&) = delete;
  SqliteDb& operator=(const SqliteDb&) = delete;

  // Opens (creating if missing) a read-write database; ":memory:" works.
  static Result<SqliteDb> open(const std::string& path);

  sqlite3* handle() const { return db_; }
  const std::string& path() const { return path_; }
  // Runs one or more statements that return no rows of interest.
  Status exec(std::string_view sql);
  Result<SqliteStmt> prepare(std::string_view sql);
  // The single value of a one-row, one-column query (e.g. a PRAGMA).
  Result<std::string> query_text(std::string_view sql);
  Result<int64_t> query_int64(std::string_view sql);
  // Rows changed by the latest INSERT, UPDATE or DELETE.
  int64_t changes() const;

 private:
  sqlite3* db_ = nullptr;
  std::string path_;
};

// BEGIN IMMEDIATE on construction (check status()); rolls back on
// destruction unless commit() succeeded.
class SqliteTransaction {
 public:
  explicit SqliteTransaction(SqliteDb& db);
  ~SqliteTransaction();
  SqliteTransaction(const SqliteTransaction&) = delete;
  SqliteTransaction& operator=(const SqliteTransaction&) = delete;

  const Status& status() const { return begin_status_; }
  Status commit();

 private:
  SqliteDb& db_;
  Status begin_status_;
  bool open_ = false;
};

// Brings the schema from version N-1 to N.
struct SqliteMigration {
  int to_version;
  std::string_view sql;
};

// Schema version recorded in the `schema_version` table (0: none yet).
Result<int> read_schema_version(SqliteDb& db);

// Applies, in order, every migration whose to_version is above the stored
// version, each in its own IMMEDIATE transaction that also records the new
// version (so concurrent openers never apply one twice). `migrations` must
// be numbered 1, 2, 3, ... A database newer than the last migration is
// FailedPrecondition. Returns the final version.
Result<int> migrate_schema(SqliteDb& db, std::span<const SqliteMigration> migrations);

}  // namespace cartserve
