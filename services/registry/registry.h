// The registry's logic, shared by the gRPC service and the Hub HTTP API: validation, revision
// resolution, commits checked against the blob store, kernel variants, garbage collection.
// No transport in here.
//
//   auto registry = Registry::Open({.data_directory = "/var/lib/flotilla/registry"});
//   auto commit = (*registry)->Resolve("acme", "llama", "v1");  // branch, tag, id or id prefix
//   auto files = (*registry)->Files(*commit);
//
// Thread-safe. Note [Garbage collection and concurrent pushes]: a push first asks which blobs
// are missing (FindMissingBlobs touches the ones present), uploads the rest, then commits.
// CreateCommit checks every blob under a shared lock that CollectGarbage takes exclusively, and
// collection spares blobs modified within the grace period or with an upload in progress, so a
// blob a push is about to reference is never collected from under it.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <shared_mutex>
#include <string>
#include <vector>

#include <absl/status/statusor.h>
#include <absl/time/time.h>

#include "services/registry/blob_store.h"
#include "services/registry/kernel_manifest.h"
#include "services/registry/metadata_store.h"
#include "services/registry/s3_client.h"
#include "services/registry/xet_store.h"

namespace flotilla::registry {

struct RegistryOptions {
  std::string data_directory;
  // Where the metadata (and the Xet tables) live: empty for SQLite files under data_directory, or
  // a postgresql:// URL that several replicas share.
  std::string metadata_url;
  // Where the blobs (and Xet xorbs) live: empty for local disk under data_directory, or
  // s3://bucket/prefix (then data_directory keeps only partial uploads and a read cache).
  std::string blob_url;
  S3Options s3;  // endpoint, region and credentials for blob_url (its bucket comes from the URL)
  // Blobs younger than this are never collected (a push may be about to reference them).
  absl::Duration garbage_grace_period = absl::Minutes(10);
  // Partial uploads untouched for this long are deleted at start and by garbage collection.
  absl::Duration stale_partial_age = absl::Hours(24);
};

struct GarbageReport {
  int64_t deleted_blobs = 0;
  int64_t freed_bytes = 0;
  int64_t kept_blobs = 0;
  int64_t deleted_partials = 0;
  XetGarbageReport xet;
};

struct KernelVariant {
  std::string variant;
  std::vector<TreeEntry> files;
  std::string library;     // build/<variant>/<library>, from kernel.json
  std::string entry_json;  // the variant's entry in kernel.json, as written
};

class Registry {
 public:
  static absl::StatusOr<std::unique_ptr<Registry>> Open(const RegistryOptions& options);
  Registry(RegistryOptions options, std::unique_ptr<MetadataStore> metadata, std::unique_ptr<BlobStore> blobs);

  MetadataStore& metadata() { return *metadata_; }
  BlobStore& blobs() { return *blobs_; }
  // The Xet CAS over the same blobs (see Note [One store, two views] in xet_store.h).
  XetStore& xet() { return *xet_; }

  absl::StatusOr<RepositoryRecord> CreateRepository(const std::string& namespace_name, const std::string& name,
                                                    int kind, bool exist_ok);
  absl::StatusOr<RepositoryRecord> GetRepository(const std::string& namespace_name, const std::string& name);
  absl::Status DeleteRepository(const std::string& namespace_name, const std::string& name);

  // "" means the repository's default branch. NOT_FOUND lists the branches and tags there are;
  // an ambiguous prefix is INVALID_ARGUMENT listing the candidates.
  absl::StatusOr<CommitRecord> Resolve(const std::string& namespace_name, const std::string& name,
                                       const std::string& revision);
  absl::StatusOr<std::vector<TreeEntry>> Files(const CommitRecord& commit);
  // History from `revision` back along first parents, newest first.
  absl::StatusOr<std::vector<CommitRecord>> Log(const std::string& namespace_name, const std::string& name,
                                                const std::string& revision, int limit);

  // Validates every path and checks every blob is stored with the stated size, then commits.
  absl::StatusOr<CommitRecord> CreateCommit(const std::string& namespace_name, const std::string& name,
                                            const std::string& branch, const std::optional<std::string>& expected_parent,
                                            const std::string& author, const std::string& message,
                                            std::vector<TreeEntry> files);
  absl::StatusOr<RefRecord> CreateTag(const std::string& namespace_name, const std::string& name,
                                      const std::string& revision, const std::string& tag);

  // The size of the file stored under `sha256`: a blob, or a file stored as Xet chunks (Note [One
  // store, two views] in xet_store.h); NOT_FOUND when neither holds it.
  absl::StatusOr<int64_t> StoredSize(const std::string& sha256);
  // Appends bytes [offset, offset + length) of the file stored under `sha256` (either kind).
  absl::Status ReadStored(const std::string& sha256, int64_t offset, int64_t length, std::string* output);

  // The digests (from `digests`) the store lacks; the present ones are touched (see the Note).
  std::vector<std::string> FindMissingBlobs(const std::vector<std::string>& digests);
  // Called once an upload finished, for the stored-bytes statistics.
  void BlobStored(int64_t size) { stored_bytes_ += size; }

  // The variant under build/<variant>/ of a kernel repository named
  // "torch<version>-<accelerator>-<architecture>" in its kernel.json (see kernel_manifest.h).
  // NOT_FOUND lists the variants there are, or the compute capabilities a CUDA variant was built for
  // when `compute_capability` ("8.0"; empty: any) is not among them.
  absl::StatusOr<KernelVariant> FindKernelVariant(const std::string& namespace_name, const std::string& name,
                                                  const std::string& revision, const std::string& torch_version,
                                                  const std::string& accelerator, const std::string& architecture,
                                                  const std::string& compute_capability = "");

  absl::StatusOr<GarbageReport> CollectGarbage(bool dry_run);

  static constexpr int kKernelKind = 3;  // flotilla.v1.RepositoryKind KERNEL

  // Bytes on disk: blobs and the Xet store's xorbs.
  int64_t stored_bytes() { return stored_bytes_ + xet_->stored_bytes(); }
  // Logical bytes (every commit's tree) over stored bytes; 1 when nothing is stored.
  double DedupRatio();

 private:
  // kernel.json of a commit's files, read from the blob store and parsed.
  absl::StatusOr<KernelManifest> ReadKernelManifest(const std::vector<TreeEntry>& files);

  RegistryOptions options_;
  std::unique_ptr<MetadataStore> metadata_;
  std::unique_ptr<BlobStore> blobs_;
  std::unique_ptr<XetStore> xet_;
  std::shared_mutex garbage_mutex_;
  std::atomic<int64_t> stored_bytes_{0};
};

}  // namespace flotilla::registry
