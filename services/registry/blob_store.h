// Content-addressed blob storage: every file's bytes live once, under their sha256.
//
// BlobStore is the interface; LocalBlobStore keeps blobs on a local disk (S3BlobStore, in
// s3_blob_store.h, keeps them in a bucket that registry replicas share):
//
//   <root>/blobs/<aa>/<sha256>        complete, verified blobs (read-only once renamed in place)
//   <root>/uploads/<sha256>.partial   an upload in progress, kept across restarts for resume
//
//   LocalBlobStore store("/var/lib/flotilla/registry");
//   auto upload = store.BeginUpload(sha256, size, /*offset=*/0);
//   (*upload)->Append(bytes);
//   absl::Status done = (*upload)->Finish();  // verifies sha256 and size, fsyncs, renames in place
//
// A streamed upload is begun under StreamedUploadKey(namespace, name, upload_id) and ended with
// FinishAs(sha256), the digest the client names last.
//
// A blob appears in blobs/ only complete and verified (temp file, fsync, rename), so a crash
// leaves at most a partial upload, never a corrupt blob. Thread-safe: one upload per digest at a
// time (a second one gets UNAVAILABLE until the first ends); reads run concurrently.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <absl/strings/string_view.h>

#include <absl/status/status.h>
#include <absl/status/statusor.h>
#include <absl/time/time.h>

namespace flotilla::registry {

// Incremental sha256 (OpenSSL EVP). Not thread-safe; one per stream.
class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;
  void Update(absl::string_view data);
  // Lowercase hex; the hasher is spent afterwards.
  std::string HexDigest();

 private:
  void* context_;  // EVP_MD_CTX
};

// sha256 of a file's contents, read in 1 MiB chunks.
absl::StatusOr<std::string> Sha256OfFile(const std::string& path);
std::string Sha256OfString(absl::string_view data);

// Creates (or truncates) the file at `path`, writes `bytes` and fsyncs it, past the page cache
// where the filesystem allows (Note [Direct upload writes] in blob_store.cc; a xorb is written
// this way). The caller renames it into place.
absl::Status WriteFileDurably(const std::string& path, absl::string_view bytes);

// One upload in progress. Append as the bytes arrive; Finish once all `size` bytes are in.
class BlobUpload {
 public:
  virtual ~BlobUpload() = default;
  // Bytes held so far (the offset the next Append continues from).
  virtual int64_t committed_size() const = 0;
  // OUT_OF_RANGE when the data would run past the announced size.
  virtual absl::Status Append(absl::string_view data) = 0;
  // Makes the bytes so far durable (fsync) so a resumed upload can continue from them.
  virtual absl::Status Sync() = 0;
  // Verifies size and sha256 and moves the blob in place. DATA_LOSS (and the partial is deleted)
  // when the digest does not match the bytes.
  virtual absl::Status Finish() = 0;
  // Finish for an upload begun under a StreamedUploadKey: the bytes must hash to `sha256`, which
  // the client names only after sending them; the blob then appears under it.
  virtual absl::Status FinishAs(const std::string& sha256) = 0;
};

// A streamed upload (Note [Streamed push] in registry_client.cc) is held under a key derived from
// the repository and the client's upload id, until its last message names the sha256: 64 hex
// digits, like a digest, but the sha256 of a string no blob's bytes can be asked to match.
std::string StreamedUploadKey(absl::string_view namespace_name, absl::string_view name, absl::string_view upload_id);
// 1-128 characters of [A-Za-z0-9._-]; INVALID_ARGUMENT naming the id otherwise.
absl::Status ValidateUploadId(absl::string_view upload_id);

struct BlobInfo {
  std::string sha256;
  int64_t size = 0;
  absl::Time modified;
};

class BlobStore {
 public:
  virtual ~BlobStore() = default;
  // The blob's size, or NOT_FOUND.
  virtual absl::StatusOr<int64_t> Size(const std::string& sha256) = 0;
  // Marks a blob as recently used, so garbage collection's grace period protects it (a push that
  // skipped uploading it will reference it soon).
  virtual absl::Status Touch(const std::string& sha256) = 0;
  // Bytes of a partial upload kept for resume (0 when there is none).
  virtual int64_t PartialSize(const std::string& sha256) = 0;
  // Starts or resumes an upload. `offset` must be 0 or equal to PartialSize (FAILED_PRECONDITION
  // otherwise, naming the offset to resume from). ALREADY_EXISTS when the blob is complete.
  virtual absl::StatusOr<std::unique_ptr<BlobUpload>> BeginUpload(const std::string& sha256, int64_t size,
                                                                   int64_t offset) = 0;
  // Reads up to `length` bytes at `offset` into `buffer` (resized to what was read).
  virtual absl::Status Read(const std::string& sha256, int64_t offset, int64_t length, std::string* buffer) = 0;
  // The local file of a blob, when the store keeps one (for zero-copy serving); empty otherwise.
  virtual std::string LocalPath(const std::string& sha256) = 0;
  virtual absl::Status Delete(const std::string& sha256) = 0;
  virtual absl::Status ForEachBlob(const std::function<void(const BlobInfo&)>& visit) = 0;
  // Digests with an upload in progress in this process (garbage collection spares them).
  virtual std::set<std::string> UploadsInProgress() = 0;
  // Deletes staged uploads (a shared store's temporary objects) older than `age` that a killed
  // process left; how many went. Local disk keeps no such thing.
  virtual absl::StatusOr<int64_t> DeleteStaleStaging(absl::Duration age) { return int64_t{0}; }
};

class LocalBlobStore final : public BlobStore {
 public:
  // Creates the folders; deletes partial uploads untouched for longer than `stale_partial_age`.
  static absl::StatusOr<std::unique_ptr<LocalBlobStore>> Open(const std::string& root,
                                                              absl::Duration stale_partial_age = absl::Hours(24));

  absl::StatusOr<int64_t> Size(const std::string& sha256) override;
  absl::Status Touch(const std::string& sha256) override;
  int64_t PartialSize(const std::string& sha256) override;
  absl::StatusOr<std::unique_ptr<BlobUpload>> BeginUpload(const std::string& sha256, int64_t size,
                                                           int64_t offset) override;
  absl::Status Read(const std::string& sha256, int64_t offset, int64_t length, std::string* buffer) override;
  std::string LocalPath(const std::string& sha256) override;
  absl::Status Delete(const std::string& sha256) override;
  absl::Status ForEachBlob(const std::function<void(const BlobInfo&)>& visit) override;
  std::set<std::string> UploadsInProgress() override;

  // Partial uploads removed by Open (for logs and tests).
  int removed_stale_partials() const { return removed_stale_partials_; }

  std::string BlobPath(const std::string& sha256) const;
  std::string PartialPath(const std::string& sha256) const;

 private:
  friend class LocalBlobUpload;
  explicit LocalBlobStore(std::string root) : root_(std::move(root)) {}
  void EndUpload(const std::string& sha256);

  std::string root_;
  int removed_stale_partials_ = 0;
  std::mutex mutex_;
  std::set<std::string> uploads_in_progress_;  // guarded by mutex_
};

}  // namespace flotilla::registry
