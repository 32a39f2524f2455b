#include "services/registry/metadata_store.h"

#include <algorithm>
#include <functional>

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

constexpr char kSqliteSchema[] = R"sql(
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
CREATE INDEX IF NOT EXISTS tree_entries_size ON tree_entries (size);
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

// The same tables in PostgreSQL. Text compares byte by byte (COLLATE "C"), as SQLite's does, so
// listings and page tokens sort the same on both backends whatever the server's locale.
constexpr char kPostgresSchema[] = R"sql(
CREATE TABLE IF NOT EXISTS repositories (
  id BIGSERIAL PRIMARY KEY,
  namespace TEXT COLLATE "C" NOT NULL,
  name TEXT COLLATE "C" NOT NULL,
  kind BIGINT NOT NULL,
  default_branch TEXT COLLATE "C" NOT NULL,
  created BIGINT NOT NULL,
  UNIQUE (namespace, name));
CREATE TABLE IF NOT EXISTS trees (
  tree_id TEXT COLLATE "C" PRIMARY KEY,
  total_size BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS tree_entries (
  tree_id TEXT COLLATE "C" NOT NULL,
  path TEXT COLLATE "C" NOT NULL,
  size BIGINT NOT NULL,
  sha256 TEXT COLLATE "C" NOT NULL,
  PRIMARY KEY (tree_id, path));
CREATE INDEX IF NOT EXISTS tree_entries_sha256 ON tree_entries (sha256);
CREATE INDEX IF NOT EXISTS tree_entries_size ON tree_entries (size);
CREATE TABLE IF NOT EXISTS commits (
  repository_id BIGINT NOT NULL,
  commit_id TEXT COLLATE "C" NOT NULL,
  tree_id TEXT COLLATE "C" NOT NULL,
  parents TEXT COLLATE "C" NOT NULL,
  author TEXT NOT NULL,
  message TEXT NOT NULL,
  created BIGINT NOT NULL,
  PRIMARY KEY (repository_id, commit_id));
CREATE INDEX IF NOT EXISTS commits_tree ON commits (tree_id);
CREATE TABLE IF NOT EXISTS refs (
  repository_id BIGINT NOT NULL,
  name TEXT COLLATE "C" NOT NULL,
  is_tag BIGINT NOT NULL,
  commit_id TEXT COLLATE "C" NOT NULL,
  PRIMARY KEY (repository_id, name))
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


// Note [Commits on PostgreSQL]
// Several replicas commit to one database, so the invariants that SQLite's single writer gave for
// free are held by locks, at READ COMMITTED:
// - CommitToBranch locks the repository's row (SELECT ... FOR UPDATE) before it reads the branch
//   head: commits to one repository queue, each sees the head the previous one wrote, and an
//   expected-parent check can never pass on a stale head. A row lock was chosen over SERIALIZABLE
//   because it cannot fail: SERIALIZABLE would abort one of two concurrent pushes (40001) and the
//   retry would then report "the branch moved" to a client that asked for no parent check; with
//   the lock the second simply commits on top of the first. The lock also covers a branch that
//   does not exist yet (there is no ref row to lock then) and repository deletion.
// - CommitToBranch runs the registry's blob check (`verify`) after taking ROW EXCLUSIVE on
//   `commits`, and garbage collection deletes blobs inside WithCommitsPaused (SHARE on `commits`):
//   so on any replica a commit either sees its blobs stored and lands before collection reads the
//   referenced set, or runs after the collection and finds a collected blob missing (refused,
//   FAILED_PRECONDITION; the client uploads it again). A commit never names a deleted blob.
// - A commit may reuse a tree another repository wrote; DeleteOrphanTrees must not delete that
//   tree between the commit's "tree exists" check and its INSERT into commits. Commits take
//   ROW EXCLUSIVE on `commits` first thing, and DeleteOrphanTrees takes SHARE on it, which waits
//   for in-flight commits and holds new ones back for the few milliseconds the delete takes.
// SQLite needs neither: BEGIN IMMEDIATE already makes every write transaction run alone.

absl::StatusOr<std::unique_ptr<SqlMetadataStore>> SqlMetadataStore::Open(const std::string& location) {
  absl::StatusOr<std::unique_ptr<SqlDatabase>> database = OpenSqlDatabase(location);
  if (!database.ok()) return database.status();
  return Open(std::shared_ptr<SqlDatabase>(*std::move(database)));
}

absl::StatusOr<std::unique_ptr<SqlMetadataStore>> SqlMetadataStore::Open(std::shared_ptr<SqlDatabase> database) {
  const bool postgres = database->dialect() == SqlDialect::kPostgres;
  if (absl::Status status = database->ExecuteScript(postgres ? kPostgresSchema : kSqliteSchema); !status.ok()) {
    return absl::Status(status.code(), absl::StrCat("create the registry's metadata tables: ", status.message()));
  }
  return std::unique_ptr<SqlMetadataStore>(new SqlMetadataStore(std::move(database)));
}

absl::StatusOr<int64_t> SqlMetadataStore::RepositoryId(SqlSession& session, const std::string& namespace_name,
                                                       const std::string& name, bool lock) {
  absl::StatusOr<SqlRows> rows =
      session.Run(absl::StrCat("SELECT id FROM repositories WHERE namespace = ?1 AND name = ?2",
                               lock ? database_->ForUpdate() : ""),
                  {namespace_name, name});
  if (!rows.ok()) return rows.status();
  if (rows->empty()) {
    return absl::NotFoundError(absl::StrCat("repository ", RepositoryName(namespace_name, name),
                                            " does not exist (create it first, e.g. `flotilla push` creates it)"));
  }
  return rows->Int(0, 0);
}

namespace {

RepositoryRecord RepositoryFromRow(const SqlRows& rows, size_t row) {
  RepositoryRecord record;
  record.namespace_name = rows.Text(row, 0);
  record.name = rows.Text(row, 1);
  record.kind = static_cast<int>(rows.Int(row, 2));
  record.default_branch = rows.Text(row, 3);
  record.created_unix_seconds = rows.Int(row, 4);
  record.head_commit = rows.Text(row, 5);
  return record;
}

constexpr char kSelectRepository[] =
    "SELECT r.namespace, r.name, r.kind, r.default_branch, r.created, COALESCE(f.commit_id, '') FROM repositories r "
    "LEFT JOIN refs f ON f.repository_id = r.id AND f.name = r.default_branch AND f.is_tag = 0 ";

// Runs `body` in a transaction and hands back what it produced.
template <typename T>
absl::StatusOr<T> InTransaction(SqlDatabase& database, const std::function<absl::StatusOr<T>(SqlSession&)>& body) {
  std::optional<T> value;
  absl::Status status = database.Transaction([&](SqlSession& session) -> absl::Status {
    absl::StatusOr<T> result = body(session);
    if (!result.ok()) return result.status();
    value = *std::move(result);
    return absl::OkStatus();
  });
  if (!status.ok()) return status;
  return *std::move(value);
}

}  // namespace

absl::StatusOr<RepositoryRecord> SqlMetadataStore::GetRepositoryIn(SqlSession& session,
                                                                   const std::string& namespace_name,
                                                                   const std::string& name) {
  absl::StatusOr<SqlRows> rows =
      session.Run(absl::StrCat(kSelectRepository, "WHERE r.namespace = ?1 AND r.name = ?2"), {namespace_name, name});
  if (!rows.ok()) return rows.status();
  if (rows->empty()) {
    return absl::NotFoundError(absl::StrCat("repository ", RepositoryName(namespace_name, name), " does not exist"));
  }
  return RepositoryFromRow(*rows, 0);
}

absl::StatusOr<RepositoryRecord> SqlMetadataStore::CreateRepository(const std::string& namespace_name,
                                                                    const std::string& name, int kind, bool exist_ok) {
  absl::StatusOr<SqlRows> inserted = database_->Run(
      "INSERT INTO repositories (namespace, name, kind, default_branch, created) VALUES (?1, ?2, ?3, 'main', ?4)",
      {namespace_name, name, static_cast<int64_t>(kind), static_cast<int64_t>(absl::ToUnixSeconds(absl::Now()))});
  if (absl::IsAlreadyExists(inserted.status())) {
    if (exist_ok) return GetRepository(namespace_name, name);
    return absl::AlreadyExistsError(absl::StrCat("repository ", RepositoryName(namespace_name, name), " already exists"));
  }
  if (!inserted.ok()) return inserted.status();
  return GetRepository(namespace_name, name);
}

absl::StatusOr<RepositoryRecord> SqlMetadataStore::GetRepository(const std::string& namespace_name,
                                                                 const std::string& name) {
  absl::StatusOr<SqlRows> rows =
      database_->Run(absl::StrCat(kSelectRepository, "WHERE r.namespace = ?1 AND r.name = ?2"), {namespace_name, name});
  if (!rows.ok()) return rows.status();
  if (rows->empty()) {
    return absl::NotFoundError(absl::StrCat("repository ", RepositoryName(namespace_name, name), " does not exist"));
  }
  return RepositoryFromRow(*rows, 0);
}

absl::StatusOr<std::vector<RepositoryRecord>> SqlMetadataStore::ListRepositories(const std::string& name_filter,
                                                                                 int kind, int page_size,
                                                                                 const std::string& page_token) {
  const char* contains = database_->dialect() == SqlDialect::kPostgres ? "strpos" : "instr";
  absl::StatusOr<SqlRows> rows = database_->Run(
      absl::StrCat(kSelectRepository, "WHERE ", contains, "(r.namespace || '/' || r.name, ?1) > 0 ",
                   "AND (?2 = 0 OR r.kind = ?2) AND r.namespace || '/' || r.name > ?3 ",
                   "ORDER BY r.namespace || '/' || r.name LIMIT ?4"),
      {name_filter, static_cast<int64_t>(kind), page_token, static_cast<int64_t>(page_size)});
  if (!rows.ok()) return rows.status();
  std::vector<RepositoryRecord> records;
  for (size_t row = 0; row < rows->size(); ++row) records.push_back(RepositoryFromRow(*rows, row));
  return records;
}

absl::Status SqlMetadataStore::DeleteRepository(const std::string& namespace_name, const std::string& name) {
  return database_->Transaction([&](SqlSession& session) -> absl::Status {
    absl::StatusOr<int64_t> id = RepositoryId(session, namespace_name, name, /*lock=*/true);
    if (!id.ok()) return id.status();
    for (const char* sql : {"DELETE FROM refs WHERE repository_id = ?1", "DELETE FROM commits WHERE repository_id = ?1",
                            "DELETE FROM repositories WHERE id = ?1"}) {
      if (absl::Status status = session.Run(sql, {*id}).status(); !status.ok()) return status;
    }
    return absl::OkStatus();
  });
}

absl::StatusOr<CommitRecord> SqlMetadataStore::CommitToBranch(const std::string& namespace_name,
                                                              const std::string& name, const std::string& branch,
                                                              const std::optional<std::string>& expected_parent,
                                                              const std::string& author, const std::string& message,
                                                              absl::Time time, std::vector<TreeEntry> files,
                                                              const std::function<absl::Status()>& verify) {
  std::sort(files.begin(), files.end(), [](const TreeEntry& a, const TreeEntry& b) { return a.path < b.path; });
  for (size_t i = 1; i < files.size(); ++i) {
    if (files[i].path == files[i - 1].path) {
      return absl::InvalidArgumentError(absl::StrCat("commit to ", RepositoryName(namespace_name, name), ": path '",
                                                     files[i].path, "' appears twice in the tree"));
    }
  }
  const bool postgres = database_->dialect() == SqlDialect::kPostgres;
  return InTransaction<CommitRecord>(*database_, [&](SqlSession& session) -> absl::StatusOr<CommitRecord> {
    if (postgres) {  // Note [Commits on PostgreSQL]
      if (absl::Status status = session.Run("LOCK TABLE commits IN ROW EXCLUSIVE MODE").status(); !status.ok()) {
        return status;
      }
    }
    absl::StatusOr<int64_t> id = RepositoryId(session, namespace_name, name, /*lock=*/true);
    if (!id.ok()) return id.status();
    if (verify) {
      if (absl::Status status = verify(); !status.ok()) return status;
    }

    std::string head;
    absl::StatusOr<SqlRows> ref =
        session.Run("SELECT commit_id, is_tag FROM refs WHERE repository_id = ?1 AND name = ?2", {*id, branch});
    if (!ref.ok()) return ref.status();
    if (!ref->empty()) {
      if (ref->Int(0, 1) != 0) {
        return absl::FailedPreconditionError(absl::StrCat("commit to ", RepositoryName(namespace_name, name), "@", branch,
                                                          ": '", branch, "' is a tag, not a branch"));
      }
      head = ref->Text(0, 0);
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

    absl::StatusOr<SqlRows> exists = session.Run("SELECT 1 FROM trees WHERE tree_id = ?1", {commit.tree_id});
    if (!exists.ok()) return exists.status();
    if (exists->empty()) {
      // Another repository may be writing the same tree right now: ON CONFLICT waits for it and
      // keeps its rows (identical, since the tree id is their hash).
      int64_t total = 0;
      for (const TreeEntry& file : files) {
        absl::Status status = session
                                  .Run("INSERT INTO tree_entries (tree_id, path, size, sha256) VALUES (?1, ?2, ?3, ?4) "
                                       "ON CONFLICT DO NOTHING",
                                       {commit.tree_id, file.path, file.size, file.sha256})
                                  .status();
        if (!status.ok()) return status;
        total += file.size;
      }
      absl::Status status =
          session.Run("INSERT INTO trees (tree_id, total_size) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
                      {commit.tree_id, total})
              .status();
      if (!status.ok()) return status;
    }
    absl::Status status =
        session
            .Run("INSERT INTO commits (repository_id, commit_id, tree_id, parents, author, message, created) "
                 "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT DO NOTHING",
                 {*id, commit.commit_id, commit.tree_id, absl::StrJoin(commit.parent_ids, " "), author, message,
                  commit.created_unix_seconds})
            .status();
    if (!status.ok()) return status;
    status = session
                 .Run("INSERT INTO refs (repository_id, name, is_tag, commit_id) VALUES (?1, ?2, 0, ?3) "
                      "ON CONFLICT (repository_id, name) DO UPDATE SET is_tag = 0, commit_id = excluded.commit_id",
                      {*id, branch, commit.commit_id})
                 .status();
    if (!status.ok()) return status;
    return commit;
  });
}

absl::StatusOr<std::vector<RefRecord>> SqlMetadataStore::ListRefs(const std::string& namespace_name,
                                                                  const std::string& name) {
  absl::StatusOr<SqlRows> rows = database_->Run(
      "SELECT f.name, f.commit_id, f.is_tag FROM refs f JOIN repositories r ON r.id = f.repository_id "
      "WHERE r.namespace = ?1 AND r.name = ?2 ORDER BY f.is_tag, f.name",
      {namespace_name, name});
  if (!rows.ok()) return rows.status();
  if (rows->empty()) {
    absl::StatusOr<RepositoryRecord> repository = GetRepository(namespace_name, name);
    if (!repository.ok()) return repository.status();
  }
  std::vector<RefRecord> refs;
  for (size_t row = 0; row < rows->size(); ++row) {
    refs.push_back({rows->Text(row, 0), rows->Text(row, 1), rows->Int(row, 2) != 0});
  }
  return refs;
}

absl::Status SqlMetadataStore::CreateTag(const std::string& namespace_name, const std::string& name,
                                         const std::string& tag, const std::string& commit_id) {
  return database_->Transaction([&](SqlSession& session) -> absl::Status {
    absl::StatusOr<int64_t> id = RepositoryId(session, namespace_name, name, /*lock=*/true);
    if (!id.ok()) return id.status();
    absl::Status status =
        session.Run("INSERT INTO refs (repository_id, name, is_tag, commit_id) VALUES (?1, ?2, 1, ?3)", {*id, tag, commit_id})
            .status();
    if (absl::IsAlreadyExists(status)) {
      return absl::AlreadyExistsError(absl::StrCat("tag ", tag, ": a tag or branch of that name already exists in ",
                                                   RepositoryName(namespace_name, name)));
    }
    return status;
  });
}

absl::Status SqlMetadataStore::DeleteTag(const std::string& namespace_name, const std::string& name,
                                         const std::string& tag) {
  return database_->Transaction([&](SqlSession& session) -> absl::Status {
    absl::StatusOr<int64_t> id = RepositoryId(session, namespace_name, name, /*lock=*/true);
    if (!id.ok()) return id.status();
    absl::StatusOr<SqlRows> removed =
        session.Run("DELETE FROM refs WHERE repository_id = ?1 AND name = ?2 AND is_tag = 1", {*id, tag});
    if (!removed.ok()) return removed.status();
    if (removed->affected() == 0) {
      return absl::NotFoundError(absl::StrCat("tag ", tag, " does not exist in ", RepositoryName(namespace_name, name)));
    }
    return absl::OkStatus();
  });
}

absl::StatusOr<CommitRecord> SqlMetadataStore::GetCommit(const std::string& namespace_name, const std::string& name,
                                                         const std::string& commit_id) {
  absl::StatusOr<SqlRows> rows = database_->Run(
      "SELECT c.tree_id, c.parents, c.author, c.message, c.created FROM commits c JOIN repositories r "
      "ON r.id = c.repository_id WHERE r.namespace = ?1 AND r.name = ?2 AND c.commit_id = ?3",
      {namespace_name, name, commit_id});
  if (!rows.ok()) return rows.status();
  if (rows->empty()) {
    absl::StatusOr<RepositoryRecord> repository = GetRepository(namespace_name, name);
    if (!repository.ok()) return repository.status();
    return absl::NotFoundError(absl::StrCat("commit ", commit_id, " does not exist in ", RepositoryName(namespace_name, name)));
  }
  CommitRecord commit;
  commit.commit_id = commit_id;
  commit.tree_id = rows->Text(0, 0);
  commit.parent_ids = absl::StrSplit(rows->Text(0, 1), ' ', absl::SkipEmpty());
  commit.author = rows->Text(0, 2);
  commit.message = rows->Text(0, 3);
  commit.created_unix_seconds = rows->Int(0, 4);
  return commit;
}

absl::StatusOr<std::vector<std::string>> SqlMetadataStore::FindCommitsByPrefix(const std::string& namespace_name,
                                                                               const std::string& name,
                                                                               const std::string& prefix) {
  absl::StatusOr<SqlRows> rows = database_->Run(
      "SELECT c.commit_id FROM commits c JOIN repositories r ON r.id = c.repository_id "
      "WHERE r.namespace = ?1 AND r.name = ?2 AND substr(c.commit_id, 1, length(?3)) = ?3 LIMIT 10",
      {namespace_name, name, prefix});
  if (!rows.ok()) return rows.status();
  if (rows->empty()) {
    absl::StatusOr<RepositoryRecord> repository = GetRepository(namespace_name, name);
    if (!repository.ok()) return repository.status();
  }
  std::vector<std::string> ids;
  for (size_t row = 0; row < rows->size(); ++row) ids.push_back(rows->Text(row, 0));
  return ids;
}

absl::StatusOr<std::vector<TreeEntry>> SqlMetadataStore::GetTree(const std::string& tree_id) {
  absl::StatusOr<SqlRows> rows =
      database_->Run("SELECT path, size, sha256 FROM tree_entries WHERE tree_id = ?1 ORDER BY path", {tree_id});
  if (!rows.ok()) return rows.status();
  std::vector<TreeEntry> entries;
  for (size_t row = 0; row < rows->size(); ++row) entries.push_back({rows->Text(row, 0), rows->Int(row, 1), rows->Text(row, 2)});
  return entries;
}

absl::StatusOr<std::set<std::string>> SqlMetadataStore::ReferencedBlobs() {
  absl::StatusOr<SqlRows> rows = database_->Run(
      "SELECT DISTINCT e.sha256 FROM tree_entries e WHERE e.tree_id IN (SELECT tree_id FROM commits)");
  if (!rows.ok()) return rows.status();
  std::set<std::string> digests;
  for (size_t row = 0; row < rows->size(); ++row) digests.insert(rows->Text(row, 0));
  return digests;
}

absl::StatusOr<std::vector<std::string>> SqlMetadataStore::BlobsOfSize(int64_t size, int limit) {
  absl::StatusOr<SqlRows> rows = database_->Run(
      "SELECT e.sha256 FROM tree_entries e JOIN commits c ON c.tree_id = e.tree_id WHERE e.size = ? "
      "GROUP BY e.sha256 ORDER BY MAX(c.created) DESC LIMIT ?",
      {size, int64_t{limit}});
  if (!rows.ok()) return rows.status();
  std::vector<std::string> digests;
  for (size_t row = 0; row < rows->size(); ++row) digests.push_back(rows->Text(row, 0));
  return digests;
}

absl::StatusOr<int64_t> SqlMetadataStore::LogicalBytes() {
  absl::StatusOr<SqlRows> rows =
      database_->Run("SELECT COALESCE(SUM(t.total_size), 0) FROM commits c JOIN trees t ON t.tree_id = c.tree_id");
  if (!rows.ok()) return rows.status();
  if (rows->empty()) return int64_t{0};
  return rows->Int(0, 0);
}

absl::Status SqlMetadataStore::WithCommitsPaused(const std::function<absl::Status()>& body) {
  // SQLite: one registry process owns the file, and its own lock (Registry::garbage_mutex_)
  // already keeps commits out. PostgreSQL: SHARE on `commits` waits for the commits in flight
  // (ROW EXCLUSIVE, taken first thing by CommitToBranch) and holds new ones back.
  if (database_->dialect() != SqlDialect::kPostgres) return body();
  return database_->Transaction([&](SqlSession& session) -> absl::Status {
    if (absl::Status status = session.Run("LOCK TABLE commits IN SHARE MODE").status(); !status.ok()) return status;
    return body();
  });
}

absl::Status SqlMetadataStore::DeleteOrphanTrees() {
  const bool postgres = database_->dialect() == SqlDialect::kPostgres;
  return database_->Transaction([&](SqlSession& session) -> absl::Status {
    if (postgres) {  // Note [Commits on PostgreSQL]
      if (absl::Status status = session.Run("LOCK TABLE commits IN SHARE MODE").status(); !status.ok()) return status;
    }
    for (const char* sql : {"DELETE FROM tree_entries WHERE tree_id NOT IN (SELECT tree_id FROM commits)",
                            "DELETE FROM trees WHERE tree_id NOT IN (SELECT tree_id FROM commits)"}) {
      if (absl::Status status = session.Run(sql).status(); !status.ok()) return status;
    }
    return absl::OkStatus();
  });
}

}  // namespace flotilla::registry
