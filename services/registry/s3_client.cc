#include "services/registry/s3_client.h"

#include <curl/curl.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <cstdio>
#include <mutex>

#include <absl/strings/ascii.h>
#include <absl/strings/escaping.h>
#include <absl/strings/match.h>
#include <absl/strings/numbers.h>
#include <absl/strings/str_cat.h>
#include <absl/strings/str_join.h>
#include <absl/strings/strip.h>
#include <absl/time/clock.h>

#include "services/registry/blob_store.h"

namespace flotilla::registry {
namespace {

std::string Hex(const unsigned char* data, size_t length) {
  return absl::BytesToHexString(absl::string_view(reinterpret_cast<const char*>(data), length));
}

std::string Hmac(absl::string_view key, absl::string_view message) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()), reinterpret_cast<const unsigned char*>(message.data()),
       message.size(), digest, &length);
  return std::string(reinterpret_cast<const char*>(digest), length);
}

// RFC 3986 percent-encoding as SigV4 wants it: unreserved characters stay, everything else is
// %XX (uppercase); '/' stays in paths (keys) and is encoded in query values.
std::string UriEncode(absl::string_view text, bool keep_slash) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string encoded;
  for (unsigned char character : text) {
    if (absl::ascii_isalnum(character) || character == '-' || character == '_' || character == '.' ||
        character == '~' || (keep_slash && character == '/')) {
      encoded.push_back(static_cast<char>(character));
    } else {
      encoded.push_back('%');
      encoded.push_back(kHex[character >> 4]);
      encoded.push_back(kHex[character & 15]);
    }
  }
  return encoded;
}

std::string XmlUnescape(absl::string_view text) {
  std::string result(text);
  for (const auto& [entity, character] : std::initializer_list<std::pair<const char*, const char*>>{
           {"&lt;", "<"}, {"&gt;", ">"}, {"&quot;", "\""}, {"&apos;", "'"}, {"&amp;", "&"}}) {
    size_t position = 0;
    while ((position = result.find(entity, position)) != std::string::npos) {
      result.replace(position, strlen(entity), character);
      position += 1;
    }
  }
  return result;
}

// The text of the first <tag>...</tag> in `xml` at or after `from`; nullopt when absent.
std::optional<std::string> XmlElement(absl::string_view xml, absl::string_view tag, size_t from = 0,
                                      size_t* end = nullptr) {
  const std::string open = absl::StrCat("<", tag, ">");
  const std::string close = absl::StrCat("</", tag, ">");
  const size_t start = xml.find(open, from);
  if (start == absl::string_view::npos) return std::nullopt;
  const size_t stop = xml.find(close, start + open.size());
  if (stop == absl::string_view::npos) return std::nullopt;
  if (end != nullptr) *end = stop + close.size();
  return XmlUnescape(xml.substr(start + open.size(), stop - start - open.size()));
}

absl::Time ParseS3Time(const std::string& text) {
  absl::Time time;
  std::string error;
  if (absl::ParseTime("%Y-%m-%dT%H:%M:%E*SZ", text, &time, &error)) return time;
  if (absl::ParseTime("%a, %d %b %Y %H:%M:%S GMT", text, &time, &error)) return time;  // HTTP date (HEAD)
  return absl::UnixEpoch();
}

size_t AppendToString(char* data, size_t size, size_t count, void* target) {
  static_cast<std::string*>(target)->append(data, size * count);
  return size * count;
}

size_t WriteToFile(char* data, size_t size, size_t count, void* target) {
  return std::fwrite(data, size, count, static_cast<std::FILE*>(target)) * size;
}

size_t ReadFromFile(char* data, size_t size, size_t count, void* source) {
  return std::fread(data, size, count, static_cast<std::FILE*>(source)) * size;
}

size_t CollectHeader(char* data, size_t size, size_t count, void* target) {
  absl::string_view line(data, size * count);
  const size_t colon = line.find(':');
  if (colon != absl::string_view::npos) {
    auto& headers = *static_cast<std::map<std::string, std::string>*>(target);
    headers[absl::AsciiStrToLower(line.substr(0, colon))] = std::string(absl::StripAsciiWhitespace(line.substr(colon + 1)));
  }
  return size * count;
}

const std::string kEmptySha256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

}  // namespace

std::string SigV4Signature(const std::string& secret_access_key, const std::string& date, const std::string& region,
                           const std::string& service, const std::string& string_to_sign) {
  std::string key = Hmac(absl::StrCat("AWS4", secret_access_key), date);
  key = Hmac(key, region);
  key = Hmac(key, service);
  key = Hmac(key, "aws4_request");
  const std::string signature = Hmac(key, string_to_sign);
  return Hex(reinterpret_cast<const unsigned char*>(signature.data()), signature.size());
}

absl::Status ParseS3Url(absl::string_view url, std::string* bucket, std::string* prefix) {
  absl::string_view rest = url;
  if (!absl::ConsumePrefix(&rest, "s3://") || rest.empty() || rest.front() == '/') {
    return absl::InvalidArgumentError(
        absl::StrCat("blob URL: expected s3://<bucket>[/<prefix>] but got '", url, "'"));
  }
  const size_t slash = rest.find('/');
  *bucket = std::string(rest.substr(0, slash));
  std::string path = slash == absl::string_view::npos ? "" : std::string(rest.substr(slash + 1));
  while (!path.empty() && path.back() == '/') path.pop_back();
  *prefix = path.empty() ? "" : path + "/";
  return absl::OkStatus();
}

S3Client::S3Client(S3Options options) : options_(std::move(options)) {
  static std::once_flag initialized;
  std::call_once(initialized, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
  while (!options_.endpoint.empty() && options_.endpoint.back() == '/') options_.endpoint.pop_back();
}

absl::StatusOr<S3Client::Response> S3Client::Perform(Request request) {
  // SigV4: canonical request → string to sign → signature under the date/region/service key chain.
  const absl::Time now = absl::Now();
  const std::string amz_date = absl::FormatTime("%Y%m%dT%H%M%SZ", now, absl::UTCTimeZone());
  const std::string date = amz_date.substr(0, 8);
  const std::string host_and_port = std::string(absl::StripPrefix(
      absl::StripPrefix(options_.endpoint, "https://"), "http://"));
  std::string path = absl::StrCat("/", UriEncode(options_.bucket, false));
  if (!request.key.empty()) absl::StrAppend(&path, "/", UriEncode(request.key, true));

  request.headers["host"] = host_and_port;
  request.headers["x-amz-date"] = amz_date;
  request.headers["x-amz-content-sha256"] = request.payload_sha256.empty() ? kEmptySha256 : request.payload_sha256;
  if (!options_.session_token.empty()) request.headers["x-amz-security-token"] = options_.session_token;

  std::vector<std::string> query_parts;
  for (const auto& [name, value] : request.query) {  // std::map: sorted by name, as SigV4 wants
    query_parts.push_back(absl::StrCat(UriEncode(name, false), "=", UriEncode(value, false)));
  }
  const std::string query = absl::StrJoin(query_parts, "&");
  std::string canonical_headers;
  std::vector<std::string> signed_names;
  for (const auto& [name, value] : request.headers) {
    absl::StrAppend(&canonical_headers, name, ":", absl::StripAsciiWhitespace(value), "\n");
    signed_names.push_back(name);
  }
  const std::string signed_headers = absl::StrJoin(signed_names, ";");
  const std::string canonical_request =
      absl::StrCat(request.method, "\n", path, "\n", query, "\n", canonical_headers, "\n", signed_headers, "\n",
                   request.headers["x-amz-content-sha256"]);
  const std::string scope = absl::StrCat(date, "/", options_.region, "/s3/aws4_request");
  const std::string string_to_sign =
      absl::StrCat("AWS4-HMAC-SHA256\n", amz_date, "\n", scope, "\n", Sha256OfString(canonical_request));
  const std::string authorization = absl::StrCat(
      "AWS4-HMAC-SHA256 Credential=", options_.access_key_id, "/", scope, ", SignedHeaders=", signed_headers,
      ", Signature=", SigV4Signature(options_.secret_access_key, date, options_.region, "s3", string_to_sign));

  CURL* curl = curl_easy_init();
  if (curl == nullptr) return absl::ResourceExhaustedError("s3: curl_easy_init failed");
  const std::string url = absl::StrCat(options_.endpoint, path, query.empty() ? "" : "?", query);
  curl_slist* header_list = nullptr;
  for (const auto& [name, value] : request.headers) {
    if (name == "host") continue;  // curl sends it from the URL
    header_list = curl_slist_append(header_list, absl::StrCat(name, ": ", value).c_str());
  }
  header_list = curl_slist_append(header_list, absl::StrCat("authorization: ", authorization).c_str());
  header_list = curl_slist_append(header_list, "Expect:");  // no 100-continue round trip
  Response response;
  curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
  curl_easy_setopt(curl, CURLOPT_HTTPHEADER, header_list);
  curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT, 10L);
  curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, CollectHeader);
  curl_easy_setopt(curl, CURLOPT_HEADERDATA, &response.headers);
  if (request.method == "HEAD") {
    curl_easy_setopt(curl, CURLOPT_NOBODY, 1L);
  } else if (request.method == "POST") {
    curl_easy_setopt(curl, CURLOPT_POST, 1L);
    curl_easy_setopt(curl, CURLOPT_POSTFIELDS, request.body.data());
    curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(request.body.size()));
  } else if (request.method == "PUT") {
    curl_easy_setopt(curl, CURLOPT_UPLOAD, 1L);
    if (request.upload_file != nullptr) {
      curl_easy_setopt(curl, CURLOPT_READFUNCTION, ReadFromFile);
      curl_easy_setopt(curl, CURLOPT_READDATA, request.upload_file);
      curl_easy_setopt(curl, CURLOPT_INFILESIZE_LARGE, static_cast<curl_off_t>(request.upload_size));
    } else {
      curl_easy_setopt(curl, CURLOPT_READFUNCTION, +[](char* data, size_t size, size_t count, void* source) -> size_t {
        auto* remaining = static_cast<absl::string_view*>(source);
        const size_t length = std::min(size * count, remaining->size());
        std::memcpy(data, remaining->data(), length);
        remaining->remove_prefix(length);
        return length;
      });
      curl_easy_setopt(curl, CURLOPT_READDATA, &request.body);
      curl_easy_setopt(curl, CURLOPT_INFILESIZE_LARGE, static_cast<curl_off_t>(request.body.size()));
    }
  } else if (request.method != "GET") {
    curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, request.method.c_str());
  }
  // Error bodies (XML) always go to the string; a successful GET into a file goes to the file.
  std::string error_body;
  if (request.download_file != nullptr) {
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, WriteToFile);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, request.download_file);
    curl_easy_setopt(curl, CURLOPT_FAILONERROR, 0L);
  } else {
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, AppendToString);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, &response.body);
  }
  const CURLcode code = curl_easy_perform(curl);
  curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &response.status);
  curl_slist_free_all(header_list);
  curl_easy_cleanup(curl);
  if (code != CURLE_OK) {
    return absl::UnavailableError(absl::StrCat("s3 ", request.method, " ", url, ": ", curl_easy_strerror(code)));
  }
  return response;
}

absl::Status S3Client::ErrorFor(absl::string_view operation, const std::string& key, const Response& response) const {
  const std::string s3_code = XmlElement(response.body, "Code").value_or("");
  const std::string s3_message = XmlElement(response.body, "Message").value_or("");
  const std::string message =
      absl::StrCat("s3 ", operation, " s3://", options_.bucket, "/", key, ": HTTP ", response.status,
                   s3_code.empty() ? "" : absl::StrCat(" ", s3_code), s3_message.empty() ? "" : absl::StrCat(": ", s3_message));
  if (response.status == 404) return absl::NotFoundError(message);
  if (response.status == 403) return absl::PermissionDeniedError(message);
  if (s3_code == "BadDigest" || s3_code == "XAmzContentSHA256Mismatch") return absl::DataLossError(message);
  if (s3_code == "BucketAlreadyOwnedByYou" || s3_code == "BucketAlreadyExists") return absl::AlreadyExistsError(message);
  if (response.status >= 500 || response.status == 429 || s3_code == "SlowDown") return absl::UnavailableError(message);
  return absl::InternalError(message);
}

absl::Status S3Client::PutFile(const std::string& key, const std::string& path, const std::string& sha256_hex) {
  std::FILE* file = std::fopen(path.c_str(), "rb");
  if (file == nullptr) return absl::NotFoundError(absl::StrCat("s3 put ", key, ": cannot open ", path));
  std::fseek(file, 0, SEEK_END);
  Request request;
  request.method = "PUT";
  request.key = key;
  request.payload_sha256 = sha256_hex;
  request.upload_size = std::ftell(file);
  std::fseek(file, 0, SEEK_SET);
  request.upload_file = file;
  absl::StatusOr<Response> response = Perform(std::move(request));
  std::fclose(file);
  if (!response.ok()) return response.status();
  if (response->status != 200) return ErrorFor("put", key, *response);
  return absl::OkStatus();
}

absl::Status S3Client::PutBytes(const std::string& key, absl::string_view bytes) {
  Request request;
  request.method = "PUT";
  request.key = key;
  request.payload_sha256 = Sha256OfString(bytes);
  request.body = bytes;
  absl::StatusOr<Response> response = Perform(std::move(request));
  if (!response.ok()) return response.status();
  if (response->status != 200) return ErrorFor("put", key, *response);
  return absl::OkStatus();
}

absl::Status S3Client::PutFileMultipart(const std::string& key, const std::string& path) {
  std::FILE* file = std::fopen(path.c_str(), "rb");
  if (file == nullptr) return absl::NotFoundError(absl::StrCat("s3 multipart put ", key, ": cannot open ", path));
  std::string upload_id;
  {
    Request request;
    request.method = "POST";
    request.key = key;
    request.query["uploads"] = "";
    absl::StatusOr<Response> response = Perform(std::move(request));
    if (!response.ok() || response->status != 200) {
      std::fclose(file);
      return response.ok() ? ErrorFor("create multipart upload", key, *response) : response.status();
    }
    upload_id = XmlElement(response->body, "UploadId").value_or("");
    if (upload_id.empty()) {
      std::fclose(file);
      return absl::InternalError(absl::StrCat("s3 create multipart upload ", key, ": no UploadId in the answer"));
    }
  }
  absl::Status status;
  std::string completion = "<CompleteMultipartUpload>";
  std::string part(static_cast<size_t>(options_.multipart_part_bytes), '\0');
  for (int number = 1; status.ok(); ++number) {
    const size_t got = std::fread(part.data(), 1, part.size(), file);
    if (got == 0 && number > 1) break;
    Request request;
    request.method = "PUT";
    request.key = key;
    request.query["partNumber"] = absl::StrCat(number);
    request.query["uploadId"] = upload_id;
    request.body = absl::string_view(part.data(), got);
    request.payload_sha256 = Sha256OfString(request.body);
    absl::StatusOr<Response> response = Perform(std::move(request));
    if (!response.ok()) {
      status = response.status();
    } else if (response->status != 200) {
      status = ErrorFor(absl::StrCat("upload part ", number, " of"), key, *response);
    } else {
      absl::StrAppend(&completion, "<Part><PartNumber>", number, "</PartNumber><ETag>", response->headers["etag"],
                      "</ETag></Part>");
    }
    if (got < part.size()) break;
  }
  std::fclose(file);
  if (status.ok()) {
    absl::StrAppend(&completion, "</CompleteMultipartUpload>");
    Request request;
    request.method = "POST";
    request.key = key;
    request.query["uploadId"] = upload_id;
    request.body = completion;
    request.payload_sha256 = Sha256OfString(completion);
    absl::StatusOr<Response> response = Perform(std::move(request));
    if (!response.ok()) {
      status = response.status();
    } else if (response->status != 200 || absl::StrContains(response->body, "<Error>")) {
      status = ErrorFor("complete multipart upload", key, *response);
    }
  }
  if (!status.ok()) AbortMultipartUpload(key, upload_id).IgnoreError();
  return status;
}

absl::Status S3Client::ListMultipartUploads(const std::string& prefix,
                                            const std::function<void(const S3MultipartUpload&)>& visit) {
  Request request;
  request.method = "GET";
  request.query["uploads"] = "";
  request.query["prefix"] = prefix;
  return ForEachListed(
      "list multipart uploads", prefix, std::move(request), "Upload",
      [&](absl::string_view upload) {
        S3MultipartUpload found;
        found.key = XmlElement(upload, "Key").value_or("");
        found.upload_id = XmlElement(upload, "UploadId").value_or("");
        found.initiated = ParseS3Time(XmlElement(upload, "Initiated").value_or(""));
        visit(found);
      },
      [](absl::string_view page, Request& next) -> absl::StatusOr<bool> {
        const std::string key_marker = XmlElement(page, "NextKeyMarker").value_or("");
        const std::string upload_marker = XmlElement(page, "NextUploadIdMarker").value_or("");
        if (key_marker.empty() && upload_marker.empty()) return false;
        next.query["key-marker"] = key_marker;
        next.query["upload-id-marker"] = upload_marker;
        return true;
      });
}

absl::Status S3Client::AbortMultipartUpload(const std::string& key, const std::string& upload_id) {
  Request request;
  request.method = "DELETE";
  request.key = key;
  request.query["uploadId"] = upload_id;
  absl::StatusOr<Response> response = Perform(std::move(request));
  if (!response.ok()) return response.status();
  if (response->status != 204 && response->status != 200 && response->status != 404) {
    return ErrorFor("abort multipart upload", key, *response);
  }
  return absl::OkStatus();
}

absl::Status S3Client::GetToFile(const std::string& key, const std::string& path) {
  std::FILE* file = std::fopen(path.c_str(), "wb");
  if (file == nullptr) return absl::InternalError(absl::StrCat("s3 get ", key, ": cannot create ", path));
  Request request;
  request.method = "GET";
  request.key = key;
  request.download_file = file;
  absl::StatusOr<Response> response = Perform(std::move(request));
  const bool flushed = std::fflush(file) == 0 && fsync(fileno(file)) == 0;
  std::fclose(file);
  if (!response.ok()) return response.status();
  if (response->status != 200) {
    // The error body went into the file: read it back for the message.
    Response failed = *response;
    std::FILE* written = std::fopen(path.c_str(), "rb");
    if (written != nullptr) {
      char buffer[4096];
      size_t got = std::fread(buffer, 1, sizeof(buffer), written);
      failed.body.assign(buffer, got);
      std::fclose(written);
    }
    return ErrorFor("get", key, failed);
  }
  if (!flushed) return absl::InternalError(absl::StrCat("s3 get ", key, ": writing ", path, " failed"));
  return absl::OkStatus();
}

absl::StatusOr<std::string> S3Client::GetRange(const std::string& key, int64_t offset, int64_t length) {
  if (length <= 0) return std::string();
  Request request;
  request.method = "GET";
  request.key = key;
  request.headers["range"] = absl::StrCat("bytes=", offset, "-", offset + length - 1);
  absl::StatusOr<Response> response = Perform(std::move(request));
  if (!response.ok()) return response.status();
  if (response->status == 416) return std::string();  // at or past the end
  if (response->status != 200 && response->status != 206) return ErrorFor("get", key, *response);
  if (response->status == 200 && offset > 0) {  // a server that ignores Range
    return response->body.substr(std::min<size_t>(response->body.size(), offset), length);
  }
  return std::move(response->body);
}

absl::StatusOr<S3Object> S3Client::Head(const std::string& key) {
  Request request;
  request.method = "HEAD";
  request.key = key;
  absl::StatusOr<Response> response = Perform(std::move(request));
  if (!response.ok()) return response.status();
  if (response->status != 200) return ErrorFor("head", key, *response);
  S3Object object;
  object.key = key;
  absl::SimpleAtoi(response->headers["content-length"], &object.size);
  object.last_modified = ParseS3Time(response->headers["last-modified"]);
  return object;
}

absl::Status S3Client::Delete(const std::string& key) {
  Request request;
  request.method = "DELETE";
  request.key = key;
  absl::StatusOr<Response> response = Perform(std::move(request));
  if (!response.ok()) return response.status();
  if (response->status != 204 && response->status != 200 && response->status != 404) {
    return ErrorFor("delete", key, *response);
  }
  return absl::OkStatus();
}

absl::Status S3Client::Copy(const std::string& source_key, const std::string& destination_key) {
  Request request;
  request.method = "PUT";
  request.key = destination_key;
  request.headers["x-amz-copy-source"] = absl::StrCat("/", options_.bucket, "/", UriEncode(source_key, true));
  absl::StatusOr<Response> response = Perform(std::move(request));
  if (!response.ok()) return response.status();
  // A copy can fail after the 200 status line; the body then holds <Error>.
  if (response->status != 200 || absl::StrContains(response->body, "<Error>")) {
    return ErrorFor(absl::StrCat("copy from ", source_key, " to"), destination_key, *response);
  }
  return absl::OkStatus();
}

absl::Status S3Client::ForEachListed(
    absl::string_view operation, const std::string& prefix, Request request, absl::string_view element,
    const std::function<void(absl::string_view)>& visit,
    const std::function<absl::StatusOr<bool>(absl::string_view page, Request& next)>& next_page) {
  while (true) {
    Request next = request;  // the same listing; next_page adds the markers
    absl::StatusOr<Response> response = Perform(std::move(request));
    if (!response.ok()) return response.status();
    if (response->status != 200) return ErrorFor(operation, prefix, *response);
    size_t position = 0;
    size_t end = 0;
    while (std::optional<std::string> item = XmlElement(response->body, element, position, &end)) {
      position = end;
      visit(*item);
    }
    if (XmlElement(response->body, "IsTruncated").value_or("false") != "true") return absl::OkStatus();
    absl::StatusOr<bool> more = next_page(response->body, next);
    if (!more.ok()) return more.status();
    if (!*more) return absl::OkStatus();
    request = std::move(next);
  }
}

absl::Status S3Client::List(const std::string& prefix, const std::function<void(const S3Object&)>& visit) {
  Request request;
  request.method = "GET";
  request.query["list-type"] = "2";
  request.query["prefix"] = prefix;
  return ForEachListed(
      "list", prefix, std::move(request), "Contents",
      [&](absl::string_view contents) {
        S3Object object;
        object.key = XmlElement(contents, "Key").value_or("");
        absl::SimpleAtoi(XmlElement(contents, "Size").value_or("0"), &object.size);
        object.last_modified = ParseS3Time(XmlElement(contents, "LastModified").value_or(""));
        visit(object);
      },
      [&prefix](absl::string_view page, Request& next) -> absl::StatusOr<bool> {
        const std::string continuation = XmlElement(page, "NextContinuationToken").value_or("");
        if (continuation.empty()) {
          return absl::InternalError(absl::StrCat("s3 list ", prefix, ": truncated listing without a continuation token"));
        }
        next.query["continuation-token"] = continuation;
        return true;
      });
}

absl::Status S3Client::CreateBucket() {
  Request request;
  request.method = "PUT";
  absl::StatusOr<Response> response = Perform(std::move(request));
  if (!response.ok()) return response.status();
  if (response->status != 200) return ErrorFor("create bucket", "", *response);
  return absl::OkStatus();
}

}  // namespace flotilla::registry
