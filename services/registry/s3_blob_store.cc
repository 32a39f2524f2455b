#include "services/registry/s3_blob_store.h"

#include <openssl/rand.h>

#include <cstdio>
#include <filesystem>
#include <map>

#include <absl/strings/escaping.h>
#include <absl/strings/match.h>
#include <absl/strings/str_cat.h>
#include <absl/time/clock.h>

namespace flotilla::registry {
namespace {

std::string RandomSuffix() {
  unsigned char bytes[8];
  RAND_bytes(bytes, sizeof(bytes));
  return absl::BytesToHexString(absl::string_view(reinterpret_cast<const char*>(bytes), sizeof(bytes)));
}

}  // namespace

// The local partial and its checks are LocalBlobStore's; Finish then publishes to the bucket.
class S3BlobUpload final : public BlobUpload {
 public:
  S3BlobUpload(S3BlobStore* store, std::string sha256, std::unique_ptr<BlobUpload> local)
      : store_(store), sha256_(std::move(sha256)), local_(std::move(local)) {}
  int64_t committed_size() const override { return local_->committed_size(); }
  absl::Status Append(absl::string_view data) override { return local_->Append(data); }
  absl::Status Sync() override { return local_->Sync(); }
  absl::Status Finish() override { return FinishAs(sha256_); }
  absl::Status FinishAs(const std::string& sha256) override {
    if (absl::Status status = local_->FinishAs(sha256); !status.ok()) return status;
    return store_->Publish(sha256);
  }

 private:
  S3BlobStore* store_;
  const std::string sha256_;
  std::unique_ptr<BlobUpload> local_;
};

absl::StatusOr<std::unique_ptr<S3BlobStore>> S3BlobStore::Open(S3Options options, std::string prefix,
                                                               const std::string& cache_root,
                                                               absl::Duration stale_partial_age) {
  if (options.bucket.empty()) return absl::InvalidArgumentError("S3 blob store: no bucket given");
  if (options.endpoint.empty()) {
    options.endpoint = absl::StrCat("https://s3.", options.region, ".amazonaws.com");
  }
  if (options.access_key_id.empty() || options.secret_access_key.empty()) {
    return absl::InvalidArgumentError(
        "S3 blob store: no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or the --s3_access_key_id "
        "and --s3_secret_access_key flags)");
  }
  auto cache = LocalBlobStore::Open(cache_root, stale_partial_age);
  if (!cache.ok()) return cache.status();
  auto store = std::unique_ptr<S3BlobStore>(new S3BlobStore(std::move(options), std::move(prefix), *std::move(cache)));
  // One cheap request, so a wrong endpoint, bucket or key fails at start rather than at the first push.
  absl::StatusOr<S3Object> bucket = store->client_.Head("");
  if (!bucket.ok()) {
    return absl::Status(bucket.status().code(),
                        absl::StrCat("S3 blob store: bucket ", store->client_.options().bucket, " at ",
                                     store->client_.options().endpoint, " does not answer: ", bucket.status().message()));
  }
  return store;
}

absl::StatusOr<int64_t> S3BlobStore::Size(const std::string& sha256) {
  if (sha256.size() != 64) return cache_->Size(sha256);  // LocalBlobStore's validation and message
  absl::StatusOr<S3Object> object = client_.Head(BlobKey(sha256));
  if (absl::IsNotFound(object.status())) {
    cache_->Delete(sha256).IgnoreError();  // collected by some replica: the cached copy is stale
    return absl::NotFoundError(absl::StrCat("blob ", sha256, " is not in the registry"));
  }
  if (!object.ok()) return object.status();
  return object->size;
}

absl::Status S3BlobStore::Touch(const std::string& sha256) {
  // NOT_FOUND when the blob is missing (FindMissingBlobs relies on it). LastModified cannot be
  // changed in place, so a marker object carries the time instead.
  absl::StatusOr<int64_t> size = Size(sha256);
  if (!size.ok()) return size.status();
  return client_.PutBytes(prefix_ + "touched/" + sha256, "");
}

int64_t S3BlobStore::PartialSize(const std::string& sha256) { return cache_->PartialSize(sha256); }

absl::StatusOr<std::unique_ptr<BlobUpload>> S3BlobStore::BeginUpload(const std::string& sha256, int64_t size,
                                                                     int64_t offset) {
  absl::StatusOr<int64_t> existing = Size(sha256);
  if (existing.ok()) return absl::AlreadyExistsError(absl::StrCat("blob ", sha256, " is already in the registry"));
  if (!absl::IsNotFound(existing.status())) return existing.status();
  absl::StatusOr<std::unique_ptr<BlobUpload>> local = cache_->BeginUpload(sha256, size, offset);
  if (!local.ok()) return local.status();
  return std::unique_ptr<BlobUpload>(new S3BlobUpload(this, sha256, *std::move(local)));
}

absl::Status S3BlobStore::Publish(const std::string& sha256) {
  absl::StatusOr<int64_t> size = cache_->Size(sha256);
  if (!size.ok()) return size.status();
  if (*size > client_.options().multipart_threshold_bytes) {
    // A multipart upload is staged by S3 itself: nothing appears under the key until it completes.
    absl::Status status = client_.PutFileMultipart(BlobKey(sha256), cache_->BlobPath(sha256));
    if (!status.ok()) {
      cache_->Delete(sha256).IgnoreError();
      return absl::Status(status.code(), absl::StrCat("publish blob ", sha256, " to S3: ", status.message()));
    }
    return absl::OkStatus();
  }
  const std::string staging = absl::StrCat(prefix_, "staging/", sha256, ".", RandomSuffix());
  absl::Status status = client_.PutFile(staging, cache_->BlobPath(sha256), sha256);
  if (status.ok()) {
    status = client_.Copy(staging, BlobKey(sha256));
    // A failed delete only leaves a staging key for garbage collection.
    client_.Delete(staging).IgnoreError();
  }
  if (!status.ok()) {
    // Not in the bucket, so not in the registry: the client uploads again.
    cache_->Delete(sha256).IgnoreError();
    return absl::Status(status.code(), absl::StrCat("publish blob ", sha256, " to S3: ", status.message()));
  }
  return absl::OkStatus();
}

absl::Status S3BlobStore::Read(const std::string& sha256, int64_t offset, int64_t length, std::string* buffer) {
  if (cache_->Size(sha256).ok()) return cache_->Read(sha256, offset, length, buffer);
  absl::StatusOr<std::string> bytes = client_.GetRange(BlobKey(sha256), offset, length);
  if (absl::IsNotFound(bytes.status())) return absl::NotFoundError(absl::StrCat("blob ", sha256, " is not in the registry"));
  if (!bytes.ok()) return bytes.status();
  *buffer = *std::move(bytes);
  return absl::OkStatus();
}

std::string S3BlobStore::LocalPath(const std::string& sha256) {
  const std::string path = cache_->BlobPath(sha256);
  if (cache_->Size(sha256).ok()) return path;
  // Fetch once into the cache: temp file, sha256 check, rename (a reader never sees a partial).
  const std::string temporary = absl::StrCat(cache_->PartialPath(sha256), ".download.", RandomSuffix());
  absl::Status status = client_.GetToFile(BlobKey(sha256), temporary);
  if (status.ok()) {
    absl::StatusOr<std::string> digest = Sha256OfFile(temporary);
    if (!digest.ok() || *digest != sha256) status = absl::DataLossError("downloaded bytes do not match the sha256");
  }
  std::error_code error;
  if (status.ok()) {
    std::filesystem::create_directories(std::filesystem::path(path).parent_path(), error);
    std::filesystem::rename(temporary, path, error);
    if (!error) return path;
  }
  std::filesystem::remove(temporary, error);
  return "";
}

absl::Status S3BlobStore::Delete(const std::string& sha256) {
  if (absl::Status status = client_.Delete(BlobKey(sha256)); !status.ok()) return status;
  client_.Delete(prefix_ + "touched/" + sha256).IgnoreError();
  return cache_->Delete(sha256);
}

absl::Status S3BlobStore::ForEachBlob(const std::function<void(const BlobInfo&)>& visit) {
  std::map<std::string, absl::Time> touched;
  const std::string touched_prefix = prefix_ + "touched/";
  absl::Status listed = client_.List(touched_prefix, [&](const S3Object& object) {
    touched[object.key.substr(touched_prefix.size())] = object.last_modified;
  });
  if (!listed.ok()) return listed;
  const std::string blobs_prefix = prefix_ + "blobs/";
  return client_.List(blobs_prefix, [&](const S3Object& object) {
    BlobInfo info;
    info.sha256 = object.key.substr(blobs_prefix.size());
    info.size = object.size;
    info.modified = object.last_modified;
    if (auto found = touched.find(info.sha256); found != touched.end()) info.modified = std::max(info.modified, found->second);
    visit(info);
  });
}

std::set<std::string> S3BlobStore::UploadsInProgress() { return cache_->UploadsInProgress(); }

absl::StatusOr<int64_t> S3BlobStore::DeleteStaleStaging(absl::Duration age) {
  const absl::Time cutoff = absl::Now() - age;
  std::vector<std::string> stale;
  absl::Status listed = client_.List(prefix_ + "staging/", [&](const S3Object& object) {
    if (object.last_modified < cutoff) stale.push_back(object.key);
  });
  if (!listed.ok()) return listed;
  for (const std::string& key : stale) {
    if (absl::Status status = client_.Delete(key); !status.ok()) return status;
  }
  // Multipart uploads of large blobs a killed replica never completed (invisible, but billed).
  std::vector<S3MultipartUpload> abandoned;
  listed = client_.ListMultipartUploads(prefix_ + "blobs/", [&](const S3MultipartUpload& upload) {
    if (upload.initiated < cutoff) abandoned.push_back(upload);
  });
  if (!listed.ok()) return listed;
  for (const S3MultipartUpload& upload : abandoned) {
    if (absl::Status status = client_.AbortMultipartUpload(upload.key, upload.upload_id); !status.ok()) return status;
  }
  return static_cast<int64_t>(stale.size() + abandoned.size());
}

}  // namespace flotilla::registry
