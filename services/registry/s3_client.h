// A small S3 client for the registry's shared blob storage: the handful of object calls it needs
// (PUT from a file, GET to a file or a byte range, HEAD, DELETE, server-side COPY, LIST), over
// libcurl, signed with AWS Signature Version 4 (written from AWS's "Create a signed AWS API
// request" specification; SHA-256 and HMAC from OpenSSL). Path-style URLs
// (<endpoint>/<bucket>/<key>), which AWS, SeaweedFS, MinIO and Ceph all accept.
//
//   S3Options options;
//   options.endpoint = "http://127.0.0.1:8333";  options.bucket = "flotilla";
//   options.region = "us-east-1";  options.access_key_id = ...;  options.secret_access_key = ...;
//   S3Client s3(options);
//   absl::Status put = s3.PutFile("blobs/ab/abcd...", "/tmp/blob", /*sha256_hex=*/"abcd...");
//
// PutFile sends the body's sha256 as x-amz-content-sha256, which is also signed: S3 refuses the
// upload (BadDigest) when the bytes it received hash to something else, so what lands in the bucket
// is exactly what the registry verified. Errors: NOT_FOUND (404), PERMISSION_DENIED (403, a bad
// signature or key), UNAVAILABLE (connection failures, 5xx, throttling), DATA_LOSS (BadDigest),
// each naming the operation, the key and S3's own error code. Thread-safe (one curl handle per call).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>

#include <absl/status/status.h>
#include <absl/status/statusor.h>
#include <absl/strings/string_view.h>
#include <absl/time/time.h>

namespace flotilla::registry {

struct S3Options {
  std::string endpoint;  // "https://s3.us-east-1.amazonaws.com" or "http://127.0.0.1:8333"
  std::string region = "us-east-1";
  std::string bucket;
  std::string access_key_id;
  std::string secret_access_key;
  std::string session_token;  // optional (temporary credentials)
  // Files larger than this go up as a multipart upload (a single PUT or COPY stops at 5 GiB).
  int64_t multipart_threshold_bytes = int64_t{1} << 30;
  int64_t multipart_part_bytes = int64_t{64} << 20;  // S3 wants at least 5 MiB, at most 10,000 parts
};

struct S3MultipartUpload {
  std::string key;
  std::string upload_id;
  absl::Time initiated;
};

struct S3Object {
  std::string key;
  int64_t size = 0;
  absl::Time last_modified;
};

class S3Client {
 public:
  explicit S3Client(S3Options options);

  const S3Options& options() const { return options_; }

  // Uploads the file at `path` as `key`; `sha256_hex` must be the file's sha256 (S3 checks it).
  absl::Status PutFile(const std::string& key, const std::string& path, const std::string& sha256_hex);
  absl::Status PutBytes(const std::string& key, absl::string_view bytes);
  // Uploads the file as a multipart upload: invisible under `key` until every part is in and
  // CompleteMultipartUpload succeeds (each part carries its own signed sha256); aborted on failure.
  absl::Status PutFileMultipart(const std::string& key, const std::string& path);
  // Multipart uploads begun under `prefix` and never completed or aborted (a killed process's).
  absl::Status ListMultipartUploads(const std::string& prefix, const std::function<void(const S3MultipartUpload&)>& visit);
  absl::Status AbortMultipartUpload(const std::string& key, const std::string& upload_id);
  // Writes the object into `path` (created or truncated).
  absl::Status GetToFile(const std::string& key, const std::string& path);
  // Bytes [offset, offset + length) of the object (fewer at its end).
  absl::StatusOr<std::string> GetRange(const std::string& key, int64_t offset, int64_t length);
  absl::StatusOr<S3Object> Head(const std::string& key);
  // Deleting a missing key succeeds (S3's own semantics).
  absl::Status Delete(const std::string& key);
  // Server-side copy; the bytes never pass through the registry.
  absl::Status Copy(const std::string& source_key, const std::string& destination_key);
  // Every object under `prefix`, in key order, page by page.
  absl::Status List(const std::string& prefix, const std::function<void(const S3Object&)>& visit);

  // Creates the bucket (tests; ALREADY_EXISTS when it exists).
  absl::Status CreateBucket();

 private:
  struct Response {
    long status = 0;
    std::string body;
    std::map<std::string, std::string> headers;  // lowercase names
  };
  struct Request {
    std::string method;
    std::string key;  // empty: the bucket itself
    std::map<std::string, std::string> query;
    std::map<std::string, std::string> headers;  // lowercase names; signed
    std::string payload_sha256;                  // hex
    absl::string_view body;                      // for small PUTs
    std::FILE* upload_file = nullptr;            // for file PUTs
    int64_t upload_size = 0;
    std::FILE* download_file = nullptr;          // GET into a file instead of `body`
  };

  absl::StatusOr<Response> Perform(Request request);
  absl::Status ErrorFor(absl::string_view operation, const std::string& key, const Response& response) const;
  // The paginated listings: sends `request`, calls `visit` with each <element> of the page, and while
  // the page says IsTruncated, lets `next_page` put the page's markers into the next request (false:
  // no marker, the listing is complete; an error: the page cannot be continued).
  absl::Status ForEachListed(absl::string_view operation, const std::string& prefix, Request request,
                             absl::string_view element, const std::function<void(absl::string_view)>& visit,
                             const std::function<absl::StatusOr<bool>(absl::string_view page, Request& next)>& next_page);

  S3Options options_;
};

// "s3://bucket/some/prefix" → bucket, "some/prefix/" (empty prefix allowed).
absl::Status ParseS3Url(absl::string_view url, std::string* bucket, std::string* prefix);

// Exposed for tests: the SigV4 signing key and the hex signature of `string_to_sign`.
std::string SigV4Signature(const std::string& secret_access_key, const std::string& date, const std::string& region,
                           const std::string& service, const std::string& string_to_sign);

}  // namespace flotilla::registry
