// The registry's metadata: repositories, commits, file trees, branches and tags.
//
// MetadataStore is the interface; SqlMetadataStore implements it over a SqlDatabase: SQLite (the
// embedded default, one file, WAL journal) or PostgreSQL (shared by several registry replicas).
//
//   auto store = SqlMetadataStore::Open("/var/lib/flotilla/registry/metadata.sqlite3");
//   // or SqlMetadataStore::Open("postgresql://registry@db:5432/flotilla")
//   (*store)->CreateRepository("acme", "llama", /*kind=*/1, /*exist_ok=*/false);
//   auto commit = (*store)->CommitToBranch("acme", "llama", "main", /*expected_parent=*/std::nullopt,
//                                          "alice", "first weights", absl::Now(), files);
//
// Commit ids are computed as git computes them (see Note [Commit ids]), so they are 40 lowercase
// hex digits, which huggingface_hub requires. A commit and its branch move happen in one
// transaction: readers see the old tree or the new one, never a mix, on every replica (see Note
// [Commits on PostgreSQL] in metadata_store.cc for the locks). Thread-safe.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <absl/status/status.h>
#include <absl/status/statusor.h>
#include <absl/time/time.h>

#include "services/registry/sql_database.h"

namespace flotilla::registry {

struct RepositoryRecord {
  std::string namespace_name;
  std::string name;
  int kind = 0;  // flotilla.v1.RepositoryKind
  std::string default_branch = "main";
  int64_t created_unix_seconds = 0;
  std::string head_commit;  // the default branch's head; empty before the first commit
};

struct TreeEntry {
  std::string path;
  int64_t size = 0;
  std::string sha256;
};

struct CommitRecord {
  std::string commit_id;
  std::string tree_id;
  std::vector<std::string> parent_ids;
  std::string author;
  std::string message;
  int64_t created_unix_seconds = 0;
};

struct RefRecord {
  std::string name;
  std::string commit_id;
  bool is_tag = false;
};

// Note [Commit ids]
// A tree id is the SHA-1 of "tree <length>\0" followed by one line per file, sorted by path:
// "<sha256> <size> <path>\n" (a flat listing rather than git's nested trees: the registry has no
// folders of its own). A commit id is the SHA-1 of git's commit object:
//   "commit <length>\0tree <tree id>\nparent <id>\n...author <a> <t> +0000\ncommitter <a> <t> +0000\n\n<message>\n"
// Same content, parents, author, time and message give the same id, on any replica.
std::string ComputeTreeId(const std::vector<TreeEntry>& sorted_entries);
std::string ComputeCommitId(const std::string& tree_id, const std::vector<std::string>& parent_ids,
                            const std::string& author, int64_t unix_seconds, const std::string& message);

class MetadataStore {
 public:
  virtual ~MetadataStore() = default;

  // ALREADY_EXISTS unless exist_ok (then the existing repository, whatever its kind).
  virtual absl::StatusOr<RepositoryRecord> CreateRepository(const std::string& namespace_name, const std::string& name,
                                                            int kind, bool exist_ok) = 0;
  virtual absl::StatusOr<RepositoryRecord> GetRepository(const std::string& namespace_name,
                                                         const std::string& name) = 0;
  // Sorted by "namespace/name"; `page_token` is the last name of the previous page.
  virtual absl::StatusOr<std::vector<RepositoryRecord>> ListRepositories(const std::string& name_filter, int kind,
                                                                         int page_size,
                                                                         const std::string& page_token) = 0;
  // Removes the repository, its commits and refs (blobs go at the next garbage collection).
  virtual absl::Status DeleteRepository(const std::string& namespace_name, const std::string& name) = 0;

  // Creates a commit of `files` (the whole new tree) on `branch` and moves the branch to it, in one
  // transaction. `expected_parent`: nullopt commits on whatever the head is; "" requires the branch
  // not to exist yet; an id requires the head to be that id. Otherwise ABORTED naming the head.
  // `verify` (the registry's check that every blob is stored) runs inside the transaction, where
  // no WithCommitsPaused body can run at the same time, on any replica; its error aborts the commit.
  virtual absl::StatusOr<CommitRecord> CommitToBranch(const std::string& namespace_name, const std::string& name,
                                                      const std::string& branch,
                                                      const std::optional<std::string>& expected_parent,
                                                      const std::string& author, const std::string& message,
                                                      absl::Time time, std::vector<TreeEntry> files,
                                                      const std::function<absl::Status()>& verify = {}) = 0;
  // Runs `body` while no commit is in flight or can start, on any replica sharing the database
  // (garbage collection: what it reads as referenced stays true until it has deleted the rest).
  // Commits wait meanwhile.
  virtual absl::Status WithCommitsPaused(const std::function<absl::Status()>& body) = 0;

  virtual absl::StatusOr<std::vector<RefRecord>> ListRefs(const std::string& namespace_name,
                                                          const std::string& name) = 0;
  // ALREADY_EXISTS when the tag (or a branch of that name) exists.
  virtual absl::Status CreateTag(const std::string& namespace_name, const std::string& name, const std::string& tag,
                                 const std::string& commit_id) = 0;
  virtual absl::Status DeleteTag(const std::string& namespace_name, const std::string& name,
                                 const std::string& tag) = 0;

  virtual absl::StatusOr<CommitRecord> GetCommit(const std::string& namespace_name, const std::string& name,
                                                 const std::string& commit_id) = 0;
  // Full ids of the repository's commits that start with `prefix`.
  virtual absl::StatusOr<std::vector<std::string>> FindCommitsByPrefix(const std::string& namespace_name,
                                                                       const std::string& name,
                                                                       const std::string& prefix) = 0;
  // Sorted by path.
  virtual absl::StatusOr<std::vector<TreeEntry>> GetTree(const std::string& tree_id) = 0;

  // Every sha256 that some commit's tree references (garbage collection's mark phase).
  virtual absl::StatusOr<std::set<std::string>> ReferencedBlobs() = 0;
  // Up to `limit` distinct sha256s of committed files of exactly `size` bytes, the most recently
  // committed first.
  virtual absl::StatusOr<std::vector<std::string>> BlobsOfSize(int64_t size, int limit) = 0;
  // Sum of file sizes over every commit's tree: what the registry would store without dedup.
  virtual absl::StatusOr<int64_t> LogicalBytes() = 0;
  // Removes trees no commit uses (after repository deletions).
  virtual absl::Status DeleteOrphanTrees() = 0;
};

class SqlMetadataStore final : public MetadataStore {
 public:
  // A SQLite file path or a postgresql:// URL (see OpenSqlDatabase); creates the tables.
  static absl::StatusOr<std::unique_ptr<SqlMetadataStore>> Open(const std::string& location);
  // Over an open database (the registry shares one PostgreSQL pool with the Xet store).
  static absl::StatusOr<std::unique_ptr<SqlMetadataStore>> Open(std::shared_ptr<SqlDatabase> database);

  absl::StatusOr<RepositoryRecord> CreateRepository(const std::string& namespace_name, const std::string& name,
                                                    int kind, bool exist_ok) override;
  absl::StatusOr<RepositoryRecord> GetRepository(const std::string& namespace_name, const std::string& name) override;
  absl::StatusOr<std::vector<RepositoryRecord>> ListRepositories(const std::string& name_filter, int kind,
                                                                 int page_size, const std::string& page_token) override;
  absl::Status DeleteRepository(const std::string& namespace_name, const std::string& name) override;
  absl::StatusOr<CommitRecord> CommitToBranch(const std::string& namespace_name, const std::string& name,
                                              const std::string& branch,
                                              const std::optional<std::string>& expected_parent,
                                              const std::string& author, const std::string& message, absl::Time time,
                                              std::vector<TreeEntry> files,
                                              const std::function<absl::Status()>& verify = {}) override;
  absl::Status WithCommitsPaused(const std::function<absl::Status()>& body) override;
  absl::StatusOr<std::vector<RefRecord>> ListRefs(const std::string& namespace_name, const std::string& name) override;
  absl::Status CreateTag(const std::string& namespace_name, const std::string& name, const std::string& tag,
                         const std::string& commit_id) override;
  absl::Status DeleteTag(const std::string& namespace_name, const std::string& name, const std::string& tag) override;
  absl::StatusOr<CommitRecord> GetCommit(const std::string& namespace_name, const std::string& name,
                                         const std::string& commit_id) override;
  absl::StatusOr<std::vector<std::string>> FindCommitsByPrefix(const std::string& namespace_name,
                                                               const std::string& name,
                                                               const std::string& prefix) override;
  absl::StatusOr<std::vector<TreeEntry>> GetTree(const std::string& tree_id) override;
  absl::StatusOr<std::set<std::string>> ReferencedBlobs() override;
  absl::StatusOr<std::vector<std::string>> BlobsOfSize(int64_t size, int limit) override;
  absl::StatusOr<int64_t> LogicalBytes() override;
  absl::Status DeleteOrphanTrees() override;

  SqlDatabase& database() { return *database_; }

 private:
  explicit SqlMetadataStore(std::shared_ptr<SqlDatabase> database) : database_(std::move(database)) {}
  // The repository's id; `lock` takes its row lock (PostgreSQL) until the transaction ends.
  absl::StatusOr<int64_t> RepositoryId(SqlSession& session, const std::string& namespace_name,
                                       const std::string& name, bool lock = false);
  absl::StatusOr<RepositoryRecord> GetRepositoryIn(SqlSession& session, const std::string& namespace_name,
                                                   const std::string& name);

  std::shared_ptr<SqlDatabase> database_;
};

}  // namespace flotilla::registry
