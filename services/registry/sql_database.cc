#include "services/registry/sql_database.h"

#include <libpq-fe.h>
#include <sqlite3.h>

#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <thread>

#include <absl/strings/ascii.h>
#include <absl/strings/match.h>
#include <absl/strings/numbers.h>
#include <absl/strings/str_cat.h>

namespace flotilla::registry {

int64_t SqlRows::Int(size_t row, size_t column) const {
  int64_t value = 0;
  if (!absl::SimpleAtoi(rows_[row][column], &value)) return 0;
  return value;
}

bool IsPostgresUrl(absl::string_view location) {
  return absl::StartsWith(location, "postgresql://") || absl::StartsWith(location, "postgres://");
}

std::string RedactedDatabaseUrl(const std::string& location) {
  if (!IsPostgresUrl(location)) return location;
  const size_t scheme_end = location.find("://") + 3;
  const size_t at = location.find('@', scheme_end);
  const size_t colon = location.find(':', scheme_end);
  if (at == std::string::npos || colon == std::string::npos || colon > at) return location;
  return absl::StrCat(location.substr(0, colon + 1), "***", location.substr(at));
}

namespace {

std::string Abbreviated(absl::string_view sql) {
  std::string text(sql.substr(0, 80));
  for (char& character : text) {
    if (character == '\n') character = ' ';
  }
  return text;
}

// ---------------------------------------------------------------------------------------------
// SQLite: one connection; the database's mutex serializes statements and transactions (a
// transaction holds it throughout, so no statement of another thread lands inside it).

class SqliteSession final : public SqlSession {
 public:
  explicit SqliteSession(sqlite3* database) : database_(database) {}

  absl::StatusOr<SqlRows> Run(absl::string_view sql, const std::vector<SqlValue>& parameters) override {
    sqlite3_stmt* statement = nullptr;
    if (sqlite3_prepare_v2(database_, sql.data(), static_cast<int>(sql.size()), &statement, nullptr) != SQLITE_OK) {
      absl::Status status = absl::InternalError(
          absl::StrCat("sqlite: prepare '", Abbreviated(sql), "': ", sqlite3_errmsg(database_)));
      sqlite3_finalize(statement);
      return status;
    }
    for (size_t i = 0; i < parameters.size(); ++i) {
      const int index = static_cast<int>(i + 1);
      if (const auto* number = std::get_if<int64_t>(&parameters[i])) {
        sqlite3_bind_int64(statement, index, *number);
      } else if (const auto* text = std::get_if<std::string>(&parameters[i])) {
        sqlite3_bind_text(statement, index, text->data(), static_cast<int>(text->size()), SQLITE_TRANSIENT);
      } else {
        const std::string& bytes = std::get<SqlBytes>(parameters[i]).bytes;
        sqlite3_bind_blob(statement, index, bytes.data(), static_cast<int>(bytes.size()), SQLITE_TRANSIENT);
      }
    }
    SqlRows rows;
    int result;
    while ((result = sqlite3_step(statement)) == SQLITE_ROW) {
      const int columns = sqlite3_column_count(statement);
      std::vector<std::string> row(columns);
      for (int column = 0; column < columns; ++column) {
        const void* data = sqlite3_column_type(statement, column) == SQLITE_BLOB ? sqlite3_column_blob(statement, column)
                                                                                 : sqlite3_column_text(statement, column);
        if (data != nullptr) {
          row[column].assign(static_cast<const char*>(data), sqlite3_column_bytes(statement, column));
        }
      }
      rows.mutable_rows().push_back(std::move(row));
    }
    sqlite3_finalize(statement);
    if (result != SQLITE_DONE) {
      const std::string message = absl::StrCat("sqlite: '", Abbreviated(sql), "': ", sqlite3_errmsg(database_));
      if ((result & 0xff) == SQLITE_CONSTRAINT) return absl::AlreadyExistsError(message);
      if ((result & 0xff) == SQLITE_BUSY) return absl::UnavailableError(message);
      return absl::InternalError(message);
    }
    rows.set_affected(sqlite3_changes(database_));
    return rows;
  }

 private:
  sqlite3* database_;
};

class SqliteDatabase final : public SqlDatabase {
 public:
  explicit SqliteDatabase(sqlite3* database) : database_(database), session_(database) {}
  ~SqliteDatabase() override { sqlite3_close(database_); }

  SqlDialect dialect() const override { return SqlDialect::kSqlite; }

  absl::Status Transaction(const std::function<absl::Status(SqlSession&)>& body) override {
    std::lock_guard lock(mutex_);
    if (absl::Status begun = session_.Run("BEGIN IMMEDIATE", {}).status(); !begun.ok()) return begun;
    absl::Status status = body(session_);
    if (status.ok()) {
      status = session_.Run("COMMIT", {}).status();
      if (status.ok()) return status;
    }
    session_.Run("ROLLBACK", {}).IgnoreError();
    return status;
  }

  absl::StatusOr<SqlRows> Run(absl::string_view sql, const std::vector<SqlValue>& parameters) override {
    std::lock_guard lock(mutex_);
    return session_.Run(sql, parameters);
  }

  absl::Status ExecuteScript(absl::string_view sql) override {
    std::lock_guard lock(mutex_);
    char* error = nullptr;
    const std::string script(sql);
    if (sqlite3_exec(database_, script.c_str(), nullptr, nullptr, &error) != SQLITE_OK) {
      std::string message = error ? error : "unknown error";
      sqlite3_free(error);
      return absl::InternalError(absl::StrCat("sqlite: ", message, " in: ", Abbreviated(sql)));
    }
    return absl::OkStatus();
  }

 private:
  // Recursive: a statement run through the database from inside a transaction's body (same
  // thread) simply joins the transaction instead of deadlocking.
  std::recursive_mutex mutex_;
  sqlite3* database_;
  SqliteSession session_;
};

absl::StatusOr<std::unique_ptr<SqlDatabase>> OpenSqlite(const std::string& path) {
  sqlite3* database = nullptr;
  if (sqlite3_open_v2(path.c_str(), &database, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX,
                      nullptr) != SQLITE_OK) {
    absl::Status status = absl::UnavailableError(
        absl::StrCat("open sqlite database ", path, ": ", database ? sqlite3_errmsg(database) : "out of memory"));
    sqlite3_close(database);
    return status;
  }
  sqlite3_busy_timeout(database, 10000);
  auto opened = std::make_unique<SqliteDatabase>(database);
  if (absl::Status status = opened->ExecuteScript("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL"); !status.ok()) {
    return status;
  }
  return opened;
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL through libpq: a pool of connections, each used by one session at a time.

constexpr Oid kInt8Oid = 20;
constexpr Oid kTextOid = 25;
constexpr Oid kByteaOid = 17;
constexpr int kMaxConnections = 8;

// "?" → "$<next>", "?N" → "$N"; question marks inside single-quoted literals are left alone.
std::string ToPostgresPlaceholders(absl::string_view sql) {
  std::string rewritten;
  rewritten.reserve(sql.size() + 8);
  int next = 0;
  bool in_literal = false;
  for (size_t i = 0; i < sql.size(); ++i) {
    const char character = sql[i];
    if (character == '\'') in_literal = !in_literal;
    if (character != '?' || in_literal) {
      rewritten.push_back(character);
      continue;
    }
    size_t digits_end = i + 1;
    while (digits_end < sql.size() && absl::ascii_isdigit(sql[digits_end])) ++digits_end;
    if (digits_end > i + 1) {
      absl::StrAppend(&rewritten, "$", sql.substr(i + 1, digits_end - i - 1));
      i = digits_end - 1;
    } else {
      absl::StrAppend(&rewritten, "$", ++next);
    }
  }
  return rewritten;
}

absl::Status PostgresError(PGconn* connection, const PGresult* result, absl::string_view sql) {
  const char* state = result ? PQresultErrorField(result, PG_DIAG_SQLSTATE) : nullptr;
  const std::string code = state ? state : "";
  std::string message = result ? PQresultErrorMessage(result) : PQerrorMessage(connection);
  absl::StripTrailingAsciiWhitespace(&message);
  message = absl::StrCat("postgresql: '", Abbreviated(sql), "': ", message);
  if (code == "23505") return absl::AlreadyExistsError(message);
  if (code == "40001" || code == "40P01") return absl::AbortedError(message);
  if (absl::StartsWith(code, "08") || absl::StartsWith(code, "57P") || PQstatus(connection) != CONNECTION_OK) {
    return absl::UnavailableError(message);
  }
  return absl::InternalError(message);
}

class PostgresSession final : public SqlSession {
 public:
  explicit PostgresSession(PGconn* connection) : connection_(connection) {}

  absl::StatusOr<SqlRows> Run(absl::string_view sql, const std::vector<SqlValue>& parameters) override {
    const std::string statement = ToPostgresPlaceholders(sql);
    std::vector<Oid> types(parameters.size());
    std::vector<std::string> text(parameters.size());
    std::vector<const char*> values(parameters.size());
    std::vector<int> lengths(parameters.size());
    std::vector<int> formats(parameters.size());
    for (size_t i = 0; i < parameters.size(); ++i) {
      if (const auto* number = std::get_if<int64_t>(&parameters[i])) {
        types[i] = kInt8Oid;
        text[i] = absl::StrCat(*number);
      } else if (const auto* string = std::get_if<std::string>(&parameters[i])) {
        types[i] = kTextOid;
        text[i] = *string;
      } else {
        types[i] = kByteaOid;
        text[i] = std::get<SqlBytes>(parameters[i]).bytes;
        formats[i] = 1;  // binary: the bytes as they are
      }
      values[i] = text[i].data();
      lengths[i] = static_cast<int>(text[i].size());
    }
    PGresult* result = PQexecParams(connection_, statement.c_str(), static_cast<int>(parameters.size()), types.data(),
                                    values.data(), lengths.data(), formats.data(), /*resultFormat=*/0);
    const ExecStatusType status = PQresultStatus(result);
    if (status != PGRES_TUPLES_OK && status != PGRES_COMMAND_OK) {
      absl::Status error = PostgresError(connection_, result, sql);
      PQclear(result);
      return error;
    }
    SqlRows rows;
    const int row_count = PQntuples(result);
    const int column_count = PQnfields(result);
    rows.mutable_rows().reserve(row_count);
    for (int row = 0; row < row_count; ++row) {
      std::vector<std::string> cells(column_count);
      for (int column = 0; column < column_count; ++column) {
        if (PQgetisnull(result, row, column)) continue;
        const char* value = PQgetvalue(result, row, column);
        if (PQftype(result, column) == kByteaOid) {
          size_t length = 0;
          unsigned char* bytes = PQunescapeBytea(reinterpret_cast<const unsigned char*>(value), &length);
          if (bytes != nullptr) cells[column].assign(reinterpret_cast<const char*>(bytes), length);
          PQfreemem(bytes);
        } else {
          cells[column].assign(value, PQgetlength(result, row, column));
        }
      }
      rows.mutable_rows().push_back(std::move(cells));
    }
    int64_t affected = 0;
    absl::SimpleAtoi(PQcmdTuples(result), &affected);
    rows.set_affected(affected);
    PQclear(result);
    return rows;
  }

 private:
  PGconn* connection_;
};

void IgnoreNotice(void*, const char*) {}  // "relation already exists, skipping" and the like

class PostgresDatabase final : public SqlDatabase {
 public:
  explicit PostgresDatabase(std::string url) : url_(std::move(url)) {}
  ~PostgresDatabase() override {
    for (PGconn* connection : idle_) PQfinish(connection);
  }

  SqlDialect dialect() const override { return SqlDialect::kPostgres; }

  absl::Status Transaction(const std::function<absl::Status(SqlSession&)>& body) override {
    absl::Status status;
    for (int attempt = 0; attempt < 5; ++attempt) {
      if (attempt > 0) std::this_thread::sleep_for(std::chrono::milliseconds(10 * attempt + std::rand() % 20));
      status = WithConnection([&](PGconn* connection) -> absl::Status {
        PostgresSession session(connection);
        if (absl::Status begun = session.Run("BEGIN", {}).status(); !begun.ok()) return begun;
        absl::Status result = body(session);
        if (result.ok()) {
          result = session.Run("COMMIT", {}).status();
          if (result.ok()) return result;
        }
        session.Run("ROLLBACK", {}).IgnoreError();
        return result;
      });
      if (!absl::IsAborted(status) || !absl::StartsWith(status.message(), "postgresql:")) return status;
    }
    return status;
  }

  absl::StatusOr<SqlRows> Run(absl::string_view sql, const std::vector<SqlValue>& parameters) override {
    absl::StatusOr<SqlRows> rows;
    absl::Status status = WithConnection([&](PGconn* connection) -> absl::Status {
      PostgresSession session(connection);
      rows = session.Run(sql, parameters);
      return rows.status();
    });
    if (!status.ok()) return status;
    return rows;
  }

  absl::Status ExecuteScript(absl::string_view sql) override {
    // Replicas starting together create the schema at once; CREATE ... IF NOT EXISTS is not safe
    // against that in PostgreSQL (two creators can collide on the catalog), so one at a time.
    return WithConnection([&](PGconn* connection) -> absl::Status {
      const std::string script =
          absl::StrCat("BEGIN; SELECT pg_advisory_xact_lock(7262318); ", sql, "; COMMIT;");
      PGresult* result = PQexec(connection, script.c_str());
      const ExecStatusType status = PQresultStatus(result);
      absl::Status error = status == PGRES_COMMAND_OK || status == PGRES_TUPLES_OK
                               ? absl::OkStatus()
                               : PostgresError(connection, result, sql);
      PQclear(result);
      if (!error.ok()) PQclear(PQexec(connection, "ROLLBACK"));
      return error;
    });
  }

  absl::Status Connect() {
    return WithConnection([](PGconn*) { return absl::OkStatus(); });
  }

 private:
  absl::Status WithConnection(const std::function<absl::Status(PGconn*)>& use) {
    PGconn* connection = nullptr;
    {
      std::unique_lock lock(mutex_);
      available_.wait(lock, [&] { return !idle_.empty() || open_ < kMaxConnections; });
      if (!idle_.empty()) {
        connection = idle_.back();
        idle_.pop_back();
      } else {
        ++open_;
      }
    }
    if (connection == nullptr) {
      connection = PQconnectdb(url_.c_str());
      if (PQstatus(connection) != CONNECTION_OK) {
        std::string message = PQerrorMessage(connection);
        absl::StripTrailingAsciiWhitespace(&message);
        PQfinish(connection);
        Release(nullptr);
        return absl::UnavailableError(
            absl::StrCat("connect to postgresql ", RedactedDatabaseUrl(url_), ": ", message));
      }
      PQsetNoticeProcessor(connection, IgnoreNotice, nullptr);
    }
    absl::Status status = use(connection);
    if (PQstatus(connection) != CONNECTION_OK || PQtransactionStatus(connection) != PQTRANS_IDLE) {
      // A broken connection (server restart, network) is dropped; the next caller opens a fresh one.
      PQfinish(connection);
      connection = nullptr;
    }
    Release(connection);
    return status;
  }

  void Release(PGconn* connection) {
    {
      std::lock_guard lock(mutex_);
      if (connection != nullptr) {
        idle_.push_back(connection);
      } else {
        --open_;
      }
    }
    available_.notify_one();
  }

  const std::string url_;
  std::mutex mutex_;
  std::condition_variable available_;
  std::vector<PGconn*> idle_;  // guarded by mutex_
  int open_ = 0;               // connections open, idle or in use; guarded by mutex_
};

}  // namespace

absl::StatusOr<std::unique_ptr<SqlDatabase>> OpenSqlDatabase(const std::string& location) {
  if (!IsPostgresUrl(location)) return OpenSqlite(location);
  auto database = std::make_unique<PostgresDatabase>(location);
  if (absl::Status status = database->Connect(); !status.ok()) return status;
  return database;
}

}  // namespace flotilla::registry
