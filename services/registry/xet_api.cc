#include "services/registry/xet_api.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>

#include <absl/strings/numbers.h>
#include <absl/strings/str_cat.h>
#include <absl/strings/strip.h>
#include <absl/time/clock.h>
#include <httplib.h>
#include <nlohmann/json.hpp>

#include "services/common/logging.h"
#include "services/registry/registry_metrics.h"

namespace flotilla::registry {
namespace {

using nlohmann::json;

// Objects past these sizes are refused before their body is read (413): a xorb is at most 64 MiB
// of chunk data plus its footer; a shard of thousands of files stays far below 64 MiB.
constexpr uint64_t kMaxXorbUploadBytes = kXetMaxXorbBytes + (4ull << 20);
constexpr uint64_t kMaxShardUploadBytes = 64ull << 20;

// The CAS API's error statuses: 400 bad object, 401 bad token, 403 scope, 404, 413, 416.
void SendXetError(httplib::Response& response, const absl::Status& status) {
  Metrics().CountError("xet", status);
  int http_status = 500;
  switch (status.code()) {
    case absl::StatusCode::kInvalidArgument: http_status = 400; break;
    case absl::StatusCode::kDataLoss: http_status = 400; break;
    case absl::StatusCode::kUnauthenticated: http_status = 401; break;
    case absl::StatusCode::kPermissionDenied: http_status = 403; break;
    case absl::StatusCode::kNotFound: http_status = 404; break;
    case absl::StatusCode::kResourceExhausted: http_status = 413; break;
    case absl::StatusCode::kOutOfRange: http_status = 416; break;
    case absl::StatusCode::kUnavailable: http_status = 503; break;
    default: break;
  }
  response.status = http_status;
  std::string message(status.message());
  std::replace(message.begin(), message.end(), '\n', ' ');
  LogWarning("xet request refused", {{"status", http_status}, {"error", message}});
  response.set_header("X-Error-Message", message);
  response.set_content(json({{"error", message}}).dump(), "application/json");
}

// "bytes=a-b" (b optional) as [a, b]; nullopt without a Range header.
absl::StatusOr<std::optional<std::pair<uint64_t, uint64_t>>> ParseRange(const httplib::Request& request) {
  if (!request.has_header("Range")) return std::optional<std::pair<uint64_t, uint64_t>>();
  std::string value = request.get_header_value("Range");
  absl::string_view text = value;
  uint64_t first = 0;
  uint64_t last = UINT64_MAX;
  const bool has_unit = absl::ConsumePrefix(&text, "bytes=");
  const size_t dash = text.find('-');
  if (!has_unit || dash == absl::string_view::npos || !absl::SimpleAtoi(text.substr(0, dash), &first) ||
      (dash + 1 < text.size() && !absl::SimpleAtoi(text.substr(dash + 1), &last))) {
    return absl::InvalidArgumentError(absl::StrCat("Range: expected 'bytes=<first>-<last>', got '", value, "'"));
  }
  return std::optional<std::pair<uint64_t, uint64_t>>(std::make_pair(first, last));
}

}  // namespace

XetApi::XetApi(Registry& registry, const Authorizer& authorizer, std::string public_url, absl::Duration token_lifetime)
    : registry_(registry), authorizer_(authorizer), public_url_(std::move(public_url)), token_lifetime_(token_lifetime) {}

std::string XetApi::BaseUrl(const httplib::Request& request) const {
  if (!public_url_.empty()) return public_url_;
  return absl::StrCat("http://", request.get_header_value("Host"));
}

void XetApi::Token(const httplib::Request& request, httplib::Response& response, const std::string& namespace_name,
                   const std::string& name, bool write, const std::string& revision) {
  absl::StatusOr<std::string> caller =
      authorizer_.Check(request.get_header_value("Authorization"), namespace_name, write ? Scope::kWrite : Scope::kRead);
  if (!caller.ok()) return SendXetError(response, caller.status());
  absl::StatusOr<RepositoryRecord> repository = registry_.GetRepository(namespace_name, name);
  if (!repository.ok()) {
    response.set_header("X-Error-Code", "RepoNotFound");
    return SendXetError(response, repository.status());
  }
  // A read token needs a revision that exists; a write token may name a branch about to be created.
  if (!write && !repository->head_commit.empty()) {
    if (auto commit = registry_.Resolve(namespace_name, name, revision); !commit.ok()) {
      response.set_header("X-Error-Code", "RevisionNotFound");
      return SendXetError(response, commit.status());
    }
  }
  const int64_t expires = absl::ToUnixSeconds(absl::Now() + token_lifetime_);
  const std::string token = registry_.xet().IssueToken(absl::StrCat(namespace_name, "/", name), write, expires);
  const std::string cas_url = BaseUrl(request) + "/cas";
  response.set_header("X-Xet-Cas-Url", cas_url);
  response.set_header("X-Xet-Access-Token", token);
  response.set_header("X-Xet-Token-Expiration", std::to_string(expires));
  response.set_content(json({{"casUrl", cas_url}, {"accessToken", token}, {"exp", expires}}).dump(), "application/json");
}

void XetApi::Advertise(const httplib::Request& request, httplib::Response& response, const std::string& namespace_name,
                       const std::string& name, const std::string& commit_id, const TreeEntry& entry) {
  std::optional<XetHash> existing = registry_.xet().ExistingFileHashForBlob(entry.sha256, entry.size);
  if (!existing) {
    // No Xet view yet (a file pushed over gRPC or LFS): this answer stays plain HTTP, and the view
    // is built in the background for the next request.
    registry_.xet().IndexInBackground(entry.sha256, entry.size);
    return;
  }
  absl::StatusOr<XetHash> file_hash = *existing;
  if (file_hash.ok()) {
    if (absl::Status granted = registry_.xet().Grant(*file_hash, absl::StrCat(namespace_name, "/", name)); !granted.ok()) {
      file_hash = granted;
    }
  }
  if (!file_hash.ok()) {
    LogWarning("xet view unavailable; serving over HTTP only",
               {{"sha256", entry.sha256}, {"error", std::string(file_hash.status().message())}});
    return;
  }
  response.set_header("X-Xet-Hash", XetHashToString(*file_hash));
  response.set_header("Link", absl::StrCat("<", BaseUrl(request), "/api/models/", namespace_name, "/", name,
                                           "/xet-read-token/", commit_id, ">; rel=\"xet-auth\""));
}

void XetApi::UploadXorb(const httplib::Request& request, httplib::Response& response, const std::string& hash_text) {
  absl::StatusOr<XetTokenClaims> claims = registry_.xet().CheckToken(request.get_header_value("Authorization"));
  if (!claims.ok()) return SendXetError(response, claims.status());
  if (!claims->write) {
    return SendXetError(response, absl::PermissionDeniedError(absl::StrCat(
                                      "upload xorb: the token for ", claims->repository, " is read-only")));
  }
  absl::StatusOr<XetHash> hash = XetHashFromString(hash_text);
  if (!hash.ok()) return SendXetError(response, hash.status());
  absl::StatusOr<bool> inserted = registry_.xet().PutXorb(*hash, request.body);
  if (!inserted.ok()) return SendXetError(response, inserted.status());
  Metrics().bytes_received.Add({{"api", "xet"}}).Increment(static_cast<double>(request.body.size()));
  response.set_content(json({{"was_inserted", *inserted}}).dump(), "application/json");
}

void XetApi::UploadShard(const httplib::Request& request, httplib::Response& response) {
  absl::StatusOr<XetTokenClaims> claims = registry_.xet().CheckToken(request.get_header_value("Authorization"));
  if (!claims.ok()) return SendXetError(response, claims.status());
  if (!claims->write) {
    return SendXetError(response, absl::PermissionDeniedError(absl::StrCat(
                                      "upload shard: the token for ", claims->repository, " is read-only")));
  }
  absl::StatusOr<int> result = registry_.xet().PutShard(request.body, claims->repository);
  if (!result.ok()) return SendXetError(response, result.status());
  Metrics().bytes_received.Add({{"api", "xet"}}).Increment(static_cast<double>(request.body.size()));
  response.set_content(json({{"result", *result}}).dump(), "application/json");
}

void XetApi::Reconstruction(const httplib::Request& request, httplib::Response& response, const std::string& hash_text) {
  absl::StatusOr<XetTokenClaims> claims = registry_.xet().CheckToken(request.get_header_value("Authorization"));
  if (!claims.ok()) return SendXetError(response, claims.status());
  absl::StatusOr<XetHash> hash = XetHashFromString(hash_text);
  if (!hash.ok()) return SendXetError(response, hash.status());
  if (!registry_.xet().Granted(*hash, claims->repository)) {
    return SendXetError(response, absl::PermissionDeniedError(absl::StrCat(
                                      "reconstruct file ", hash_text, ": not a file of ", claims->repository)));
  }
  auto range = ParseRange(request);
  if (!range.ok()) return SendXetError(response, range.status());
  // The Range names file bytes for the plan, not bytes of this JSON answer: keep httplib from
  // cutting the answer to it (it would send a 206 with a slice of the JSON).
  const_cast<httplib::Request&>(request).ranges.clear();
  absl::StatusOr<XetReconstruction> plan = registry_.xet().Reconstruct(*hash, *range);
  if (!plan.ok()) return SendXetError(response, plan.status());
  const int64_t expires = absl::ToUnixSeconds(absl::Now() + token_lifetime_);
  json terms = json::array();
  for (const XetReconstructionTerm& term : plan->terms) {
    terms.push_back({{"hash", XetHashToString(term.xorb_hash)}, {"unpacked_length", term.unpacked_bytes},
                     {"range", {{"start", term.chunk_begin}, {"end", term.chunk_end}}}});
  }
  json fetch_info = json::object();
  for (const XetFetchRange& fetch : plan->fetches) {
    const std::string xorb = XetHashToString(fetch.xorb_hash);
    fetch_info[xorb].push_back(
        {{"range", {{"start", fetch.chunk_begin}, {"end", fetch.chunk_end}}},
         {"url", absl::StrCat(BaseUrl(request), "/cas/v1/fetch/", xorb, "?expires=", expires,
                              "&signature=", registry_.xet().SignFetch(fetch.xorb_hash, expires))},
         {"url_range", {{"start", fetch.byte_begin}, {"end", fetch.byte_end_inclusive}}}});
  }
  Metrics().pulls.Add({{"api", "xet"}}).Increment();
  response.set_content(json({{"offset_into_first_range", plan->offset_into_first_range},
                             {"terms", terms},
                             {"fetch_info", fetch_info}})
                           .dump(),
                       "application/json");
}

void XetApi::Fetch(const httplib::Request& request, httplib::Response& response, const std::string& hash_text) {
  absl::StatusOr<XetHash> hash = XetHashFromString(hash_text);
  if (!hash.ok()) return SendXetError(response, hash.status());
  int64_t expires = 0;
  if (!absl::SimpleAtoi(request.get_param_value("expires"), &expires) ||
      !registry_.xet().CheckFetch(*hash, expires, request.get_param_value("signature"))) {
    return SendXetError(response, absl::PermissionDeniedError(absl::StrCat(
                                      "fetch xorb ", hash_text, ": the URL's signature is invalid or expired")));
  }
  // With shared (S3) storage a replica may first have to fetch the xorb into its local folder.
  absl::StatusOr<std::string> path = registry_.xet().LocalXorbPath(*hash);
  if (!path.ok()) return SendXetError(response, path.status());
  int descriptor = open(path->c_str(), O_RDONLY | O_CLOEXEC);
  if (descriptor < 0) return SendXetError(response, absl::NotFoundError(absl::StrCat("xorb ", hash_text, " is not stored")));
  const off_t size = lseek(descriptor, 0, SEEK_END);
  prometheus::Counter* sent = &Metrics().bytes_sent.Add({{"api", "xet"}});
  // httplib cuts the Range out of the provided content (206 with Content-Range).
  response.set_content_provider(
      static_cast<size_t>(size), "application/octet-stream",
      [descriptor, sent](size_t offset, size_t length, httplib::DataSink& sink) {
        std::string buffer(std::min<size_t>(length, 4 << 20), '\0');
        ssize_t got = pread(descriptor, buffer.data(), buffer.size(), static_cast<off_t>(offset));
        if (got <= 0) return false;
        sent->Increment(static_cast<double>(got));
        return sink.write(buffer.data(), static_cast<size_t>(got));
      },
      [descriptor](bool) { close(descriptor); });
}

void XetApi::AddRoutes(httplib::Server& server) {
  constexpr char kPart[] = "([A-Za-z0-9._-]+)";
  constexpr char kHash[] = "([0-9a-fA-F]+)";
  server.Get(absl::StrCat("/api/models/", kPart, "/", kPart, "/xet-(read|write)-token/(.+)"),
             [this](const httplib::Request& request, httplib::Response& response) {
               Token(request, response, request.matches[1].str(), request.matches[2].str(),
                     request.matches[3].str() == "write", request.matches[4].str());
             });
  // Bodies are read only after the declared size was checked, so an oversized object costs no memory.
  auto limited = [](uint64_t limit, const char* what, auto handler) {
    return [limit, what, handler](const httplib::Request& request, httplib::Response& response,
                                  const httplib::ContentReader& reader) {
      uint64_t declared = 0;
      if (request.has_header("Content-Length") &&
          absl::SimpleAtoi(request.get_header_value("Content-Length"), &declared) && declared > limit) {
        return SendXetError(response, absl::ResourceExhaustedError(absl::StrCat(
                                          what, ": ", declared, " bytes exceed the limit of ", limit)));
      }
      httplib::Request& mutable_request = const_cast<httplib::Request&>(request);
      bool too_large = false;
      reader([&](const char* data, size_t length) {
        if (mutable_request.body.size() + length > limit) {
          too_large = true;
          return false;
        }
        mutable_request.body.append(data, length);
        return true;
      });
      if (too_large) {
        return SendXetError(response, absl::ResourceExhaustedError(absl::StrCat(what, ": body exceeds the limit of ", limit)));
      }
      handler(request, response);
    };
  };
  server.Post(absl::StrCat("/cas/v1/xorbs/", kPart, "/", kHash),
              limited(kMaxXorbUploadBytes, "upload xorb", [this](const httplib::Request& request, httplib::Response& response) {
                UploadXorb(request, response, request.matches[2].str());
              }));
  server.Post("/cas/v1/shards",
              limited(kMaxShardUploadBytes, "upload shard", [this](const httplib::Request& request, httplib::Response& response) {
                UploadShard(request, response);
              }));
  server.Get(absl::StrCat("/cas/v1/reconstructions/", kHash), [this](const httplib::Request& request, httplib::Response& response) {
    Reconstruction(request, response, request.matches[1].str());
  });
  server.Get(absl::StrCat("/cas/v1/fetch/", kHash), [this](const httplib::Request& request, httplib::Response& response) {
    Fetch(request, response, request.matches[1].str());
  });
  server.Get(absl::StrCat("/cas/v1/chunks/", kPart, "/", kHash), [this](const httplib::Request& request, httplib::Response& response) {
    absl::StatusOr<XetTokenClaims> claims = registry_.xet().CheckToken(request.get_header_value("Authorization"));
    if (!claims.ok()) return SendXetError(response, claims.status());
    absl::StatusOr<XetHash> chunk_hash = XetHashFromString(request.matches[2].str());
    if (!chunk_hash.ok()) return SendXetError(response, chunk_hash.status());
    absl::StatusOr<std::string> shard = registry_.xet().DedupShard(*chunk_hash);
    // 404 is the ordinary "not stored" answer here: no warning in the log for it.
    if (absl::IsNotFound(shard.status())) {
      response.status = 404;
      return;
    }
    if (!shard.ok()) return SendXetError(response, shard.status());
    response.set_content(*shard, "application/octet-stream");
  });
}

}  // namespace flotilla::registry
