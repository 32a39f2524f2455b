// One small SQL interface over the registry's two metadata databases: SQLite (the embedded
// default, one file) and PostgreSQL (shared by several registry replicas). The metadata store and
// the Xet store write their SQL once, in the subset both engines speak (`INSERT ... ON CONFLICT`,
// `?` or `?N` placeholders, which the PostgreSQL backend rewrites to `$N`), and ask `dialect()`
// only where the engines differ (schemas, row locks).
//
//   auto database = OpenSqlDatabase("postgresql://registry@db/flotilla");   // or a SQLite path
//   absl::Status status = (*database)->Transaction([&](SqlSession& session) -> absl::Status {
//     auto rows = session.Run("SELECT id FROM repositories WHERE name = ?", {std::string("llama")});
//     if (!rows.ok()) return rows.status();
//     return session.Run("UPDATE ...", {...}).status();
//   });
//
// Errors: a unique-constraint violation is ALREADY_EXISTS; a lost connection UNAVAILABLE; a
// PostgreSQL serialization failure or deadlock ABORTED (Transaction retries those a few times).
// Thread-safe: SqlDatabase hands each caller its own session (the SQLite backend shares one
// connection under a mutex; the PostgreSQL backend keeps a small pool of connections). A
// SqlSession belongs to one thread for the duration of the callback.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include <absl/status/status.h>
#include <absl/status/statusor.h>
#include <absl/strings/string_view.h>

namespace flotilla::registry {

// Bytes bound as a BLOB (SQLite) or BYTEA (PostgreSQL), rather than as text.
struct SqlBytes {
  std::string bytes;
};
using SqlValue = std::variant<int64_t, std::string, SqlBytes>;

// Rows of text cells (integers as decimal text, blobs as their raw bytes); NULL reads as "".
class SqlRows {
 public:
  size_t size() const { return rows_.size(); }
  bool empty() const { return rows_.empty(); }
  const std::string& Text(size_t row, size_t column) const { return rows_[row][column]; }
  int64_t Int(size_t row, size_t column) const;
  // Rows a statement changed (INSERT, UPDATE, DELETE).
  int64_t affected() const { return affected_; }

  std::vector<std::vector<std::string>>& mutable_rows() { return rows_; }
  void set_affected(int64_t affected) { affected_ = affected; }

 private:
  std::vector<std::vector<std::string>> rows_;
  int64_t affected_ = 0;
};

enum class SqlDialect { kSqlite, kPostgres };

class SqlSession {
 public:
  virtual ~SqlSession() = default;
  virtual absl::StatusOr<SqlRows> Run(absl::string_view sql, const std::vector<SqlValue>& parameters = {}) = 0;
};

class SqlDatabase {
 public:
  virtual ~SqlDatabase() = default;
  virtual SqlDialect dialect() const = 0;
  // Runs `body` in one transaction (SQLite: BEGIN IMMEDIATE, so writers queue; PostgreSQL: READ
  // COMMITTED, and the caller takes the row or table locks its invariants need). Committed when
  // `body` returns OK, rolled back otherwise. ABORTED from a serialization failure or deadlock
  // reruns `body` (up to 5 times), so `body` must be safe to rerun.
  virtual absl::Status Transaction(const std::function<absl::Status(SqlSession&)>& body) = 0;
  // One statement outside any explicit transaction.
  virtual absl::StatusOr<SqlRows> Run(absl::string_view sql, const std::vector<SqlValue>& parameters = {}) = 0;
  // Statements separated by ';' with no parameters (schemas).
  virtual absl::Status ExecuteScript(absl::string_view sql) = 0;
  // " FOR UPDATE" where the engine has row locks, "" for SQLite (whose writers are serialized).
  std::string ForUpdate() const { return dialect() == SqlDialect::kPostgres ? " FOR UPDATE" : ""; }
};

// `location` is a postgresql:// or postgres:// URL (libpq's connection URI, e.g.
// postgresql://user:password@host:5432/db or postgresql:///db?host=/run/postgresql) or the path of a
// SQLite file (created when missing).
absl::StatusOr<std::unique_ptr<SqlDatabase>> OpenSqlDatabase(const std::string& location);
bool IsPostgresUrl(absl::string_view location);
// The URL with any password replaced by "***" (for logs and error messages).
std::string RedactedDatabaseUrl(const std::string& location);

}  // namespace flotilla::registry
