#include "services/registry/metadata_store.h"

#include <sqlite3.h>

#include <algorithm>

#include <absl/strings/str_cat.h>
#include <absl/strings/str_join.h>
#include <absl/strings/str_split.h>
#include <openssl/evp.h>

namespace flotilla::registry {
namespace {

std::string Sha1Hex(absl::string_view data) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  EVP_Digest(data.data(), data.size(), digest, &length, EVP_sha1(), nullptr);
  static constexpr char kHex[] = "0123456789abcdef";
  std::string hex;
  for (unsigned int i = 0; i < length; ++i) {
    hex.push_back(kHex[digest[i] >> 4]);
    hex.push_back(kHex[digest[i] & 15]);
  }
  return hex;
}

std::string GitObjectId(absl::string_view type, const std::string& body) {
  std::string object = absl::StrCat(type, " ", body.size());
  object.push_back('\0');
  object += body;
  return Sha1Hex(object);
}

// A prepared statement that finalizes itself. Bind with 1-based indexes.
class Statement {
 public:
  Statement(sqlite3* database, const char* sql) : database_(database) {
    prepared_ = sqlite3_prepare_v2(database, sql, -1, &statement_, nullptr);
  }
  ~Statement() { sqlite3_finalize(statement_); }
  absl::Status status() const {
    if (prepared_ == SQLITE_OK) return absl::OkStatus();
    return absl::InternalError(absl::StrCat("sqlite prepare: ", sqlite3_errmsg(database_)));
  }
  Statement& Bind(int index, const std::string& text) {
    sqlite3_bind_text(statement_, index, text.data(), static_cast<int>(text.size()), SQLITE_TRANSIENT);
    return *this;
  }
  Statement& Bind(int index, int64_t value) {
    sqlite3_bind_int64(statement_, index, value);
    return *this;
  }
  // SQLITE_ROW or SQLITE_DONE; anything else is an error.
  int Step() { return sqlite3_step(statement_); }
  absl::Status Run() {
    int result = Step();
    if (result == SQLITE_DONE || result == SQLITE_ROW) return absl::OkStatus();
    if (result == SQLITE_CONSTRAINT) return absl::AlreadyExistsError(sqlite3_errmsg(database_));
    return absl::InternalError(absl::StrCat("sqlite: ", sqlite3_errmsg(database_)));
  }
  std::string Text(int column) {
    const unsigned char* text = sqlite3_column_text(statement_, column);
    return text ? std::string(reinterpret_cast<const char*>(text), sqlite3_column_bytes(statement_, column)) : "";
  }
  int64_t Int(int column) { return sqlite3_column_int64(statement_, column); }
  void Reset() {
    sqlite3_reset(statement_);
    sqlite3_clear_bindings(statement_);
  }

 private:
  sqlite3* database_;
  sqlite3_stmt* statement_ = nullptr;
  int prepared_;
};

absl::Status Execute(sqlite3* database, const char* sql) {
  char* error = nullptr;
  if (sqlite3_exec(database, sql, nullptr, nullptr, &error) != SQLITE_OK) {
    std::string message = error ? error : "unknown error";
    sqlite3_free(error);
    return absl::InternalError(absl::StrCat("sqlite: ", message, " in: ", std::string(sql).substr(0, 80)));
  }
  return absl::OkStatus();
}

// Rolls back unless committed.
class Transaction {
 public:
  explicit Transaction(sqlite3* database) : database_(database) {
    status_ = Execute(database, "BEGIN IMMEDIATE");
  }
  ~Transaction() {
    if (status_.ok() && !committed_) Execute(database_, "ROLLBACK").IgnoreError();
  }
  const absl::Status& status() const { return status_; }
  absl::Status Commit() {
    committed_ = true;
    return Execute(database_, "COMMIT");
  }

 private:
  sqlite3* database_;
  absl::Status status_;
  bool committed_ = false;
};

constexpr char kSchema[] = R"sql(
CREATE TABLE IF NOT EXISTS repositories (
  id INTEGER PRIMARY KEY,
  namespace TEXT NOT NULL,
  name TEXT NOT NULL,
  kind INTEGER NOT NULL,
  default_branch TEXT NOT NULL,
  created INTEGER NOT NULL,
  UNIQUE (namespace, name));
CREATE TABLE IF NOT EXISTS trees (
  tree_id TEXT PRIMARY KEY,
  total_size INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS tree_entries (
  tree_id TEXT NOT NULL,
  path TEXT NOT NULL,
  size INTEGER NOT NULL,
  sha256 TEXT NOT NULL,
  PRIMARY KEY (tree_id, path)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS tree_entries_sha256 ON tree_entries (sha256);
CREATE TABLE IF NOT EXISTS commits (
  repository_id INTEGER NOT NULL,
  commit_id TEXT NOT NULL,
  tree_id TEXT NOT NULL,
  parents TEXT NOT NULL,
  author TEXT NOT NULL,
  message TEXT NOT NULL,
  created INTEGER NOT NULL,
  PRIMARY KEY (repository_id, commit_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS refs (
  repository_id INTEGER NOT NULL,
  name TEXT NOT NULL,
  is_tag INTEGER NOT NULL,
  commit_id TEXT NOT NULL,
  PRIMARY KEY (repository_id, name)) WITHOUT ROWID;
)sql";

std::string RepositoryName(const std::string& namespace_name, const std::string& name) {
  return absl::StrCat(namespace_name, "/", name);
}

}  // namespace

std::string ComputeTreeId(const std::vector<TreeEntry>& sorted_entries) {
  std::string body;
  for (const TreeEntry& entry : sorted_entries) absl::StrAppend(&body, entry.sha256, " ", entry.size, " ", entry.path, "\n");
  return GitObjectId("tree", body);
}

std::string ComputeCommitId(const std::string& tree_id, const std::vector<std::string>& parent_ids,
                            const std::string& author, int64_t unix_seconds, const std::string& message) {
  std::string body = absl::StrCat("tree ", tree_id, "\n");
  for (const std::string& parent : parent_ids) absl::StrAppend(&body, "parent ", parent, "\n");
  absl::StrAppend(&body, "author ", author, " ", unix_seconds, " +0000\n");
  absl::StrAppend(&body, "committer ", author, " ", unix_seconds, " +0000\n\n", message);
  if (body.empty() || body.back() != '\n') body.push_back('\n');
  return GitObjectId("commit", body);
}

absl::StatusOr<std::unique_ptr<SqliteMetadataStore>> SqliteMetadataStore::Open(const std::string& path) {
  sqlite3* database = nullptr;
  if (sqlite3_open_v2(path.c_str(), &database, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX,
                      nullptr) != SQLITE_OK) {
    std::string message = database ? sqlite3_errmsg(database) : "out of memory";
    sqlite3_close(database);
    return absl::FailedPreconditionError(absl::StrCat("open metadata database ", path, ": ", message));
  }
  auto store = std::unique_ptr<SqliteMetadataStore>(new SqliteMetadataStore(database));
  sqlite3_busy_timeout(database, 10000);
  // WAL: readers never block the writer; synchronous=FULL: a commit acknowledged is a commit kept.
  for (const char* pragma : {"PRAGMA journal_mode=WAL", "PRAGMA synchronous=FULL", "PRAGMA foreign_keys=ON", kSchema}) {
    if (absl::Status status = Execute(database, pragma); !status.ok()) {
      return absl::FailedPreconditionError(absl::StrCat("open metadata database ", path, ": ", status.message()));
    }
  }
  return store;
}

SqliteMetadataStore::~SqliteMetadataStore() { sqlite3_close(database_); }

absl::StatusOr<int64_t> SqliteMetadataStore::RepositoryId(const std::string& namespace_name, const std::string& name) {
  Statement select(database_, "SELECT id FROM repositories WHERE namespace = ?1 AND name = ?2");
  select.Bind(1, namespace_name).Bind(2, name);
  if (select.Step() != SQLITE_ROW) {
    return absl::NotFoundError(absl::StrCat("repository ", RepositoryName(namespace_name, name),
                                            " does not exist (create it first, e.g. `flotilla push` creates it)"));
  }
  return select.Int(0);
}

absl::StatusOr<RepositoryRecord> SqliteMetadataStore::GetRepositoryLocked(const std::string& namespace_name,
                                                                          const std::string& name) {
  Statement select(database_,
                   "SELECT r.kind, r.default_branch, r.created, COALESCE(f.commit_id, '') FROM repositories r "
                   "LEFT JOIN refs f ON f.repository_id = r.id AND f.name = r.default_branch AND f.is_tag = 0 "
                   "WHERE r.namespace = ?1 AND r.name = ?2");
  select.Bind(1, namespace_name).Bind(2, name);
  if (select.Step() != SQLITE_ROW) {
    return absl::NotFoundError(absl::StrCat("repository ", RepositoryName(namespace_name, name), " does not exist"));
  }
  RepositoryRecord record;
  record.namespace_name = namespace_name;
  record.name = name;
  record.kind = static_cast<int>(select.Int(0));
  record.default_branch = select.Text(1);
  record.created_unix_seconds = select.Int(2);
  record.head_commit = select.Text(3);
  return record;
}

absl::StatusOr<RepositoryRecord> SqliteMetadataStore::CreateRepository(const std::string& namespace_name,
                                                                       const std::string& name, int kind,
                                                                       bool exist_ok) {
  std::lock_guard lock(mutex_);
  Statement insert(database_,
                   "INSERT INTO repositories (namespace, name, kind, default_branch, created) VALUES (?1, ?2, ?3, 'main', ?4)");
  insert.Bind(1, namespace_name).Bind(2, name).Bind(3, static_cast<int64_t>(kind)).Bind(4, absl::ToUnixSeconds(absl::Now()));
  absl::Status inserted = insert.Run();
  if (absl::IsAlreadyExists(inserted)) {
    if (exist_ok) return GetRepositoryLocked(namespace_name, name);
    return absl::AlreadyExistsError(absl::StrCat("repository ", RepositoryName(namespace_name, name), " already exists"));
  }
  if (!inserted.ok()) return inserted;
  return GetRepositoryLocked(namespace_name, name);
}

absl::StatusOr<RepositoryRecord> SqliteMetadataStore::GetRepository(const std::string& namespace_name,
                                                                    const std::string& name) {
  std::lock_guard lock(mutex_);
  return GetRepositoryLocked(namespace_name, name);
}

absl::StatusOr<std::vector<RepositoryRecord>> SqliteMetadataStore::ListRepositories(const std::string& name_filter,
                                                                                    int kind, int page_size,
                                                                                    const std::string& page_token) {
  std::lock_guard lock(mutex_);
  Statement select(database_,
                   "SELECT r.namespace, r.name, r.kind, r.default_branch, r.created, COALESCE(f.commit_id, '') "
                   "FROM repositories r LEFT JOIN refs f ON f.repository_id = r.id AND f.name = r.default_branch "
                   "AND f.is_tag = 0 WHERE instr(r.namespace || '/' || r.name, ?1) > 0 AND (?2 = 0 OR r.kind = ?2) "
                   "AND r.namespace || '/' || r.name > ?3 ORDER BY r.namespace || '/' || r.name LIMIT ?4");
  select.Bind(1, name_filter).Bind(2, static_cast<int64_t>(kind)).Bind(3, page_token).Bind(4, static_cast<int64_t>(page_size));
  std::vector<RepositoryRecord> records;
  while (select.Step() == SQLITE_ROW) {
    RepositoryRecord record;
    record.namespace_name = select.Text(0);
    record.name = select.Text(1);
    record.kind = static_cast<int>(select.Int(2));
    record.default_branch = select.Text(3);
    record.created_unix_seconds = select.Int(4);
    record.head_commit = select.Text(5);
    records.push_back(std::move(record));
  }
  return records;
}

absl::Status SqliteMetadataStore::DeleteRepository(const std::string& namespace_name, const std::string& name) {
  std::lock_guard lock(mutex_);
  Transaction transaction(database_);
  if (!transaction.status().ok()) return transaction.status();
  absl::StatusOr<int64_t> id = RepositoryId(namespace_name, name);
  if (!id.ok()) return id.status();
  for (const char* sql : {"DELETE FROM refs WHERE repository_id = ?1", "DELETE FROM commits WHERE repository_id = ?1",
                          "DELETE FROM repositories WHERE id = ?1"}) {
    Statement statement(database_, sql);
    statement.Bind(1, *id);
    if (absl::Status status = statement.Run(); !status.ok()) return status;
  }
  return transaction.Commit();
}

absl::StatusOr<CommitRecord> SqliteMetadataStore::CommitToBranch(const std::string& namespace_name,
                                                                 const std::string& name, const std::string& branch,
                                                                 const std::optional<std::string>& expected_parent,
                                                                 const std::string& author, const std::string& message,
                                                                 absl::Time time, std::vector<TreeEntry> files) {
  std::sort(files.begin(), files.end(), [](const TreeEntry& a, const TreeEntry& b) { return a.path < b.path; });
  for (size_t i = 1; i < files.size(); ++i) {
    if (files[i].path == files[i - 1].path) {
      return absl::InvalidArgumentError(absl::StrCat("commit to ", RepositoryName(namespace_name, name), ": path '",
                                                     files[i].path, "' appears twice in the tree"));
    }
  }
  std::lock_guard lock(mutex_);
  Transaction transaction(database_);
  if (!transaction.status().ok()) return transaction.status();
  absl::StatusOr<int64_t> id = RepositoryId(namespace_name, name);
  if (!id.ok()) return id.status();

  std::string head;
  {
    Statement select(database_, "SELECT commit_id, is_tag FROM refs WHERE repository_id = ?1 AND name = ?2");
    select.Bind(1, *id).Bind(2, branch);
    if (select.Step() == SQLITE_ROW) {
      if (select.Int(1) != 0) {
        return absl::FailedPreconditionError(absl::StrCat("commit to ", RepositoryName(namespace_name, name), "@", branch,
                                                          ": '", branch, "' is a tag, not a branch"));
      }
      head = select.Text(0);
    }
  }
  if (expected_parent.has_value() && *expected_parent != head) {
    return absl::AbortedError(absl::StrCat(
        "commit to ", RepositoryName(namespace_name, name), "@", branch, ": the branch moved: expected head ",
        expected_parent->empty() ? "(no branch yet)" : *expected_parent, " but it is now ",
        head.empty() ? "(no branch)" : head, "; pull the new head, rebuild your tree on it and push again"));
  }

  CommitRecord commit;
  commit.tree_id = ComputeTreeId(files);
  if (!head.empty()) commit.parent_ids.push_back(head);
  commit.author = author;
  commit.message = message;
  commit.created_unix_seconds = absl::ToUnixSeconds(time);
  commit.commit_id = ComputeCommitId(commit.tree_id, commit.parent_ids, author, commit.created_unix_seconds, message);

  {
    Statement exists(database_, "SELECT 1 FROM trees WHERE tree_id = ?1");
    exists.Bind(1, commit.tree_id);
    if (exists.Step() != SQLITE_ROW) {
      int64_t total = 0;
      Statement entry(database_, "INSERT INTO tree_entries (tree_id, path, size, sha256) VALUES (?1, ?2, ?3, ?4)");
      for (const TreeEntry& file : files) {
        entry.Reset();
        entry.Bind(1, commit.tree_id).Bind(2, file.path).Bind(3, file.size).Bind(4, file.sha256);
        if (absl::Status status = entry.Run(); !status.ok()) return status;
        total += file.size;
      }
      Statement tree(database_, "INSERT INTO trees (tree_id, total_size) VALUES (?1, ?2)");
      tree.Bind(1, commit.tree_id).Bind(2, total);
      if (absl::Status status = tree.Run(); !status.ok()) return status;
    }
  }
  Statement insert(database_,
                   "INSERT OR IGNORE INTO commits (repository_id, commit_id, tree_id, parents, author, message, created) "
                   "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)");
  insert.Bind(1, *id).Bind(2, commit.commit_id).Bind(3, commit.tree_id).Bind(4, absl::StrJoin(commit.parent_ids, " "))
      .Bind(5, author).Bind(6, message).Bind(7, commit.created_unix_seconds);
  if (absl::Status status = insert.Run(); !status.ok()) return status;
  Statement move(database_, "INSERT OR REPLACE INTO refs (repository_id, name, is_tag, commit_id) VALUES (?1, ?2, 0, ?3)");
  move.Bind(1, *id).Bind(2, branch).Bind(3, commit.commit_id);
  if (absl::Status status = move.Run(); !status.ok()) return status;
  if (absl::Status status = transaction.Commit(); !status.ok()) return status;
  return commit;
}

absl::StatusOr<std::vector<RefRecord>> SqliteMetadataStore::ListRefs(const std::string& namespace_name,
                                                                     const std::string& name) {
  std::lock_guard lock(mutex_);
  absl::StatusOr<int64_t> id = RepositoryId(namespace_name, name);
  if (!id.ok()) return id.status();
  Statement select(database_, "SELECT name, commit_id, is_tag FROM refs WHERE repository_id = ?1 ORDER BY is_tag, name");
  select.Bind(1, *id);
  std::vector<RefRecord> refs;
  while (select.Step() == SQLITE_ROW) refs.push_back({select.Text(0), select.Text(1), select.Int(2) != 0});
  return refs;
}

absl::Status SqliteMetadataStore::CreateTag(const std::string& namespace_name, const std::string& name,
                                            const std::string& tag, const std::string& commit_id) {
  std::lock_guard lock(mutex_);
  absl::StatusOr<int64_t> id = RepositoryId(namespace_name, name);
  if (!id.ok()) return id.status();
  Statement insert(database_, "INSERT INTO refs (repository_id, name, is_tag, commit_id) VALUES (?1, ?2, 1, ?3)");
  insert.Bind(1, *id).Bind(2, tag).Bind(3, commit_id);
  absl::Status status = insert.Run();
  if (absl::IsAlreadyExists(status)) {
    return absl::AlreadyExistsError(absl::StrCat("tag ", tag, ": a tag or branch of that name already exists in ",
                                                 RepositoryName(namespace_name, name)));
  }
  return status;
}

absl::Status SqliteMetadataStore::DeleteTag(const std::string& namespace_name, const std::string& name,
                                            const std::string& tag) {
  std::lock_guard lock(mutex_);
  absl::StatusOr<int64_t> id = RepositoryId(namespace_name, name);
  if (!id.ok()) return id.status();
  Statement remove(database_, "DELETE FROM refs WHERE repository_id = ?1 AND name = ?2 AND is_tag = 1");
  remove.Bind(1, *id).Bind(2, tag);
  if (absl::Status status = remove.Run(); !status.ok()) return status;
  if (sqlite3_changes(database_) == 0) {
    return absl::NotFoundError(absl::StrCat("tag ", tag, " does not exist in ", RepositoryName(namespace_name, name)));
  }
  return absl::OkStatus();
}

absl::StatusOr<CommitRecord> SqliteMetadataStore::GetCommit(const std::string& namespace_name, const std::string& name,
                                                            const std::string& commit_id) {
  std::lock_guard lock(mutex_);
  absl::StatusOr<int64_t> id = RepositoryId(namespace_name, name);
  if (!id.ok()) return id.status();
  Statement select(database_,
                   "SELECT tree_id, parents, author, message, created FROM commits WHERE repository_id = ?1 AND commit_id = ?2");
  select.Bind(1, *id).Bind(2, commit_id);
  if (select.Step() != SQLITE_ROW) {
    return absl::NotFoundError(absl::StrCat("commit ", commit_id, " does not exist in ", RepositoryName(namespace_name, name)));
  }
  CommitRecord commit;
  commit.commit_id = commit_id;
  commit.tree_id = select.Text(0);
  commit.parent_ids = absl::StrSplit(select.Text(1), ' ', absl::SkipEmpty());
  commit.author = select.Text(2);
  commit.message = select.Text(3);
  commit.created_unix_seconds = select.Int(4);
  return commit;
}

absl::StatusOr<std::vector<std::string>> SqliteMetadataStore::FindCommitsByPrefix(const std::string& namespace_name,
                                                                                  const std::string& name,
                                                                                  const std::string& prefix) {
  std::lock_guard lock(mutex_);
  absl::StatusOr<int64_t> id = RepositoryId(namespace_name, name);
  if (!id.ok()) return id.status();
  Statement select(database_,
                   "SELECT commit_id FROM commits WHERE repository_id = ?1 AND substr(commit_id, 1, length(?2)) = ?2 LIMIT 10");
  select.Bind(1, *id).Bind(2, prefix);
  std::vector<std::string> ids;
  while (select.Step() == SQLITE_ROW) ids.push_back(select.Text(0));
  return ids;
}

absl::StatusOr<std::vector<TreeEntry>> SqliteMetadataStore::GetTree(const std::string& tree_id) {
  std::lock_guard lock(mutex_);
  Statement select(database_, "SELECT path, size, sha256 FROM tree_entries WHERE tree_id = ?1 ORDER BY path");
  select.Bind(1, tree_id);
  std::vector<TreeEntry> entries;
  while (select.Step() == SQLITE_ROW) entries.push_back({select.Text(0), select.Int(1), select.Text(2)});
  return entries;
}

absl::StatusOr<std::set<std::string>> SqliteMetadataStore::ReferencedBlobs() {
  std::lock_guard lock(mutex_);
  Statement select(database_,
                   "SELECT DISTINCT e.sha256 FROM tree_entries e WHERE e.tree_id IN (SELECT tree_id FROM commits)");
  std::set<std::string> digests;
  while (select.Step() == SQLITE_ROW) digests.insert(select.Text(0));
  return digests;
}

absl::StatusOr<int64_t> SqliteMetadataStore::LogicalBytes() {
  std::lock_guard lock(mutex_);
  Statement select(database_, "SELECT COALESCE(SUM(t.total_size), 0) FROM commits c JOIN trees t ON t.tree_id = c.tree_id");
  if (select.Step() != SQLITE_ROW) return int64_t{0};
  return select.Int(0);
}

absl::Status SqliteMetadataStore::DeleteOrphanTrees() {
  std::lock_guard lock(mutex_);
  Transaction transaction(database_);
  if (!transaction.status().ok()) return transaction.status();
  for (const char* sql : {"DELETE FROM tree_entries WHERE tree_id NOT IN (SELECT tree_id FROM commits)",
                          "DELETE FROM trees WHERE tree_id NOT IN (SELECT tree_id FROM commits)"}) {
    if (absl::Status status = Execute(database_, sql); !status.ok()) return status;
  }
  return transaction.Commit();
}

}  // namespace flotilla::registry
