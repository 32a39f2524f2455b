// Blobs in an S3 bucket, shared by every registry replica (the BlobStore for --blob_url s3://...).
//
//   <prefix>blobs/<sha256>          complete, verified blobs (the only keys readers trust)
//   <prefix>staging/<sha256>.<id>   an upload between its PUT and its copy into blobs/
//   <prefix>touched/<sha256>        an empty marker whose age says when a push last reused the blob
//   <prefix>xet/xorbs/<hash>        the Xet store's xorbs (written by XetStore, see xet_store.h)
//
//   auto store = S3BlobStore::Open(s3_options, "models/", "/var/lib/flotilla/registry");
//   auto upload = (*store)->BeginUpload(sha256, size, 0);   // bytes staged on local disk
//   (*upload)->Append(bytes);
//   absl::Status done = (*upload)->Finish();   // verified, PUT to staging/, copied to blobs/
//
// Note [Staged S3 uploads]: bytes arrive into a local partial file (LocalBlobStore's, so an
// interrupted upload resumes on the replica that holds the partial). Finish verifies size and
// sha256 locally, PUTs the file under staging/ with the sha256 as the signed
// x-amz-content-sha256 (S3 itself re-checks the bytes), copies it server-side to blobs/<sha256>
// and deletes the staged key. A registry killed at any point leaves at most a partial file or a
// staging/ key: nothing under blobs/, nothing a commit could name. Staging keys older than the
// stale-partial age are deleted by garbage collection (DeleteStaleStaging). A blob above
// S3Options::multipart_threshold_bytes (1 GiB; a single PUT or COPY stops at 5 GiB) goes up as a
// multipart upload straight to blobs/<sha256> instead: S3 shows nothing under the key until the
// last part is in and the upload is completed, each part carries its signed sha256, and GC aborts
// multipart uploads older than the stale-partial age.
//
// The local data directory doubles as a read cache: hub and gRPC downloads serve mmap'd local
// files (LocalPath), so a blob is fetched from the bucket once per replica, verified against its
// sha256 and kept. Existence (Size, BeginUpload) is always asked of the bucket, never the cache,
// so a blob another replica's garbage collection deleted is not believed present here.
// Thread-safe.
#pragma once

#include <memory>
#include <string>

#include "services/registry/blob_store.h"
#include "services/registry/s3_client.h"

namespace flotilla::registry {

class S3BlobStore final : public BlobStore {
 public:
  // `prefix` is "" or ends with '/'. Checks that the bucket answers (a LIST of one page).
  static absl::StatusOr<std::unique_ptr<S3BlobStore>> Open(S3Options options, std::string prefix,
                                                           const std::string& cache_root,
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
  absl::StatusOr<int64_t> DeleteStaleStaging(absl::Duration age) override;

  S3Client& client() { return client_; }
  const std::string& prefix() const { return prefix_; }
  std::string BlobKey(const std::string& sha256) const { return prefix_ + "blobs/" + sha256; }

 private:
  friend class S3BlobUpload;
  S3BlobStore(S3Options options, std::string prefix, std::unique_ptr<LocalBlobStore> cache)
      : client_(std::move(options)), prefix_(std::move(prefix)), cache_(std::move(cache)) {}
  // Moves a blob the cache verified into the bucket (Note [Staged S3 uploads]).
  absl::Status Publish(const std::string& sha256);

  S3Client client_;
  const std::string prefix_;
  std::unique_ptr<LocalBlobStore> cache_;  // partial uploads and the read cache
};

}  // namespace flotilla::registry
