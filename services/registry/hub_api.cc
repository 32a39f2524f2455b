#include "services/registry/hub_api.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstring>
#include <map>
#include <mutex>
#include <random>
#include <set>

#include <absl/strings/escaping.h>
#include <absl/strings/match.h>
#include <absl/strings/numbers.h>
#include <absl/strings/str_cat.h>
#include <absl/strings/str_join.h>
#include <absl/strings/str_split.h>
#include <absl/time/clock.h>
#include <httplib.h>
#include <nlohmann/json.hpp>
#include <openssl/evp.h>

#include "services/common/logging.h"
#include "services/registry/names.h"
#include "services/registry/registry_metrics.h"
#include "services/registry/registry_service.h"
#include "services/registry/xet_api.h"

namespace flotilla::registry {
namespace {

using nlohmann::json;

// Note [Every file is an LFS file]
// The Hub names a small file by its git blob sha1 and a large one by its sha256 (an LFS file). The
// registry knows every file's sha256, so it presents every file as LFS: ETag and X-Linked-Etag are
// the sha256, and `oid` is the git blob id of the LFS pointer file, as the Hub's is for LFS files.
// huggingface_hub keys its cache by the etag and re-hashes 64-hex etags in local_dir mode.
std::string LfsPointer(const TreeEntry& entry) {
  return absl::StrCat("version https://git-lfs.github.com/spec/v1\noid sha256:", entry.sha256, "\nsize ", entry.size, "\n");
}

std::string GitBlobId(const std::string& content) {
  std::string object = absl::StrCat("blob ", content.size());
  object.push_back('\0');
  object += content;
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  EVP_Digest(object.data(), object.size(), digest, &length, EVP_sha1(), nullptr);
  return absl::BytesToHexString(absl::string_view(reinterpret_cast<const char*>(digest), length));
}

json LfsInfo(const TreeEntry& entry) {
  return {{"oid", entry.sha256}, {"size", entry.size}, {"pointerSize", LfsPointer(entry).size()}};
}

std::string IsoTime(int64_t unix_seconds) {
  return absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::FromUnixSeconds(unix_seconds), absl::UTCTimeZone());
}

// The error the client understands: HTTP status by code, X-Error-Code for the Hub's named errors
// (over plain HTTP the client tells a missing repo from a bad token only by it), X-Error-Message.
void SendError(httplib::Response& response, const absl::Status& status, const std::string& hub_error_code = "") {
  Metrics().CountError("hub", status);
  int http_status = 500;
  switch (status.code()) {
    case absl::StatusCode::kInvalidArgument: http_status = 400; break;
    case absl::StatusCode::kOutOfRange: http_status = 416; break;
    case absl::StatusCode::kNotFound: http_status = 404; break;
    case absl::StatusCode::kAlreadyExists: http_status = 409; break;
    case absl::StatusCode::kAborted: http_status = 412; break;
    case absl::StatusCode::kFailedPrecondition: http_status = 412; break;
    case absl::StatusCode::kUnauthenticated: http_status = 401; break;
    case absl::StatusCode::kPermissionDenied: http_status = 403; break;
    case absl::StatusCode::kDataLoss: http_status = 400; break;
    case absl::StatusCode::kUnavailable: http_status = 503; break;
    default: break;
  }
  response.status = http_status;
  if (!hub_error_code.empty()) response.set_header("X-Error-Code", hub_error_code);
  std::string message(status.message());
  std::replace(message.begin(), message.end(), '\n', ' ');
  response.set_header("X-Error-Message", message);
  response.set_content(json({{"error", message}}).dump(), "application/json");
}

// Percent-encodes a URL path, keeping '/' and RFC 3986 unreserved characters.
std::string EncodePath(const std::string& path) {
  std::string encoded;
  for (unsigned char character : path) {
    if (std::isalnum(character) || character == '/' || character == '-' || character == '_' || character == '.' ||
        character == '~') {
      encoded.push_back(static_cast<char>(character));
    } else {
      absl::StrAppend(&encoded, "%", absl::Hex(character, absl::kZeroPad2));
    }
  }
  return encoded;
}

struct RepositoryPath {
  std::string namespace_name;
  std::string name;
};

// A Hub upload ticket: the LFS batch call authorises one blob upload, the PUT presents the ticket
// (the client sends no token to an upload href).
struct UploadTicket {
  std::string sha256;
  int64_t size = 0;
  absl::Time expires;
};

}  // namespace

class HubHandlers {
 public:
  HubHandlers(Registry& registry, const Authorizer& authorizer, std::string public_url, int tree_page_size,
              absl::Duration xet_token_lifetime)
      : registry_(registry), authorizer_(authorizer), public_url_(public_url), tree_page_size_(tree_page_size),
        xet_(registry, authorizer, public_url, xet_token_lifetime) {}

  XetApi& xet() { return xet_; }

  std::string BaseUrl(const httplib::Request& request) const {
    if (!public_url_.empty()) return public_url_;
    return absl::StrCat("http://", request.get_header_value("Host"));
  }

  absl::StatusOr<std::string> Authorize(const httplib::Request& request, const std::string& namespace_name, Scope scope) {
    return authorizer_.Check(request.get_header_value("Authorization"), namespace_name, scope);
  }

  // Validates the names and the caller's scope, and that the repository exists (RepoNotFound).
  bool OpenRepository(const httplib::Request& request, httplib::Response& response, const std::string& namespace_name,
                      const std::string& name, Scope scope, std::string* who = nullptr) {
    auto caller = Authorize(request, namespace_name, scope);
    if (!caller.ok()) {
      // Unauthenticated reads of a repository look like a missing repository to the Hub client.
      SendError(response, caller.status(), absl::IsUnauthenticated(caller.status()) ? "RepoNotFound" : "");
      return false;
    }
    auto repository = registry_.GetRepository(namespace_name, name);
    if (!repository.ok()) {
      SendError(response, repository.status(), absl::IsNotFound(repository.status()) ? "RepoNotFound" : "");
      return false;
    }
    if (who) *who = *caller;
    return true;
  }

  // Splits "<revision>/<path>" where the revision may itself contain '/' (it arrives URL-decoded):
  // the shortest prefix that resolves wins.
  absl::StatusOr<std::pair<CommitRecord, std::string>> ResolveRevisionAndPath(const RepositoryPath& repository,
                                                                              const std::string& rest) {
    std::vector<std::string> segments = absl::StrSplit(rest, '/');
    absl::Status first_error;
    for (size_t count = 1; count <= segments.size(); ++count) {
      std::string revision = absl::StrJoin(segments.begin(), segments.begin() + count, "/");
      auto commit = registry_.Resolve(repository.namespace_name, repository.name, revision);
      if (commit.ok()) {
        return std::make_pair(*commit, absl::StrJoin(segments.begin() + count, segments.end(), "/"));
      }
      if (count == 1) first_error = commit.status();
    }
    return first_error;
  }

  void ModelInfo(const httplib::Request& request, httplib::Response& response, const RepositoryPath& repository,
                 const std::string& revision) {
    if (!OpenRepository(request, response, repository.namespace_name, repository.name, Scope::kRead)) return;
    auto record = registry_.GetRepository(repository.namespace_name, repository.name);
    const std::string id = absl::StrCat(repository.namespace_name, "/", repository.name);
    json info = {{"_id", id}, {"id", id}, {"modelId", id}, {"author", repository.namespace_name},
                 {"private", false}, {"disabled", false}, {"gated", false}, {"downloads", 0}, {"likes", 0},
                 {"tags", json::array()}, {"createdAt", IsoTime(record->created_unix_seconds)},
                 {"sha", nullptr}, {"siblings", json::array()}};
    if (record->head_commit.empty() && revision.empty()) {
      response.set_content(info.dump(), "application/json");
      return;
    }
    auto commit = registry_.Resolve(repository.namespace_name, repository.name, revision);
    if (!commit.ok()) return SendError(response, commit.status(), "RevisionNotFound");
    auto files = registry_.Files(*commit);
    if (!files.ok()) return SendError(response, files.status());
    json siblings = json::array();
    int64_t used = 0;
    for (const TreeEntry& entry : *files) {
      siblings.push_back({{"rfilename", entry.path}, {"size", entry.size}, {"blobId", GitBlobId(LfsPointer(entry))},
                          {"lfs", {{"sha256", entry.sha256}, {"size", entry.size},
                                   {"pointerSize", LfsPointer(entry).size()}}}});
      used += entry.size;
    }
    info["sha"] = commit->commit_id;
    info["lastModified"] = IsoTime(commit->created_unix_seconds);
    info["siblings"] = siblings;
    info["usedStorage"] = used;
    response.set_content(info.dump(), "application/json");
  }

  void Tree(const httplib::Request& request, httplib::Response& response, const RepositoryPath& repository,
            const std::string& rest) {
    if (!OpenRepository(request, response, repository.namespace_name, repository.name, Scope::kRead)) return;
    auto resolved = ResolveRevisionAndPath(repository, rest);
    if (!resolved.ok()) return SendError(response, resolved.status(), "RevisionNotFound");
    const auto& [commit, folder] = *resolved;
    auto files = registry_.Files(commit);
    if (!files.ok()) return SendError(response, files.status());
    const bool recursive = request.get_param_value("recursive") == "true" || request.get_param_value("recursive") == "True";
    const std::string prefix = folder.empty() ? "" : folder + "/";
    json items = json::array();
    std::set<std::string> folders;
    bool folder_exists = folder.empty();
    for (const TreeEntry& entry : *files) {
      if (!absl::StartsWith(entry.path, prefix)) continue;
      folder_exists = true;
      const std::string relative = entry.path.substr(prefix.size());
      // Folders on the way to this file (all of them when recursive, the first one otherwise).
      size_t slash = relative.find('/');
      while (slash != std::string::npos) {
        const std::string subfolder = prefix + relative.substr(0, slash);
        if (folders.insert(subfolder).second) {
          items.push_back({{"type", "directory"}, {"path", subfolder}, {"size", 0},
                           {"oid", GitBlobId("tree " + commit.tree_id + " " + subfolder)}});
        }
        if (!recursive) break;
        slash = relative.find('/', slash + 1);
      }
      if (!recursive && relative.find('/') != std::string::npos) continue;
      items.push_back({{"type", "file"}, {"path", entry.path}, {"size", entry.size},
                       {"oid", GitBlobId(LfsPointer(entry))}, {"lfs", LfsInfo(entry)}});
    }
    if (!folder_exists) {
      return SendError(response, absl::NotFoundError(absl::StrCat("no folder '", folder, "' in ", repository.namespace_name,
                                                                  "/", repository.name, "@", commit.commit_id)),
                       "EntryNotFound");
    }
    // Paging: ?cursor=<index>; the next page's Link stays on this registry's host.
    int64_t start = 0;
    if (request.has_param("cursor") && !absl::SimpleAtoi(request.get_param_value("cursor"), &start)) start = 0;
    start = std::clamp<int64_t>(start, 0, items.size());
    const int64_t end = std::min<int64_t>(start + tree_page_size_, items.size());
    json page = json::array();
    for (int64_t i = start; i < end; ++i) page.push_back(items[i]);
    if (end < static_cast<int64_t>(items.size())) {
      std::string path = absl::StrCat("/api/models/", repository.namespace_name, "/", repository.name, "/tree/",
                                      commit.commit_id, folder.empty() ? "" : "/" + folder);
      response.set_header("Link", absl::StrCat("<", BaseUrl(request), EncodePath(path),
                                               "?recursive=", recursive ? "true" : "false", "&cursor=", end,
                                               ">; rel=\"next\""));
    }
    response.set_content(page.dump(), "application/json");
  }

  void Refs(const httplib::Request& request, httplib::Response& response, const RepositoryPath& repository) {
    if (!OpenRepository(request, response, repository.namespace_name, repository.name, Scope::kRead)) return;
    auto refs = registry_.metadata().ListRefs(repository.namespace_name, repository.name);
    if (!refs.ok()) return SendError(response, refs.status());
    json branches = json::array(), tags = json::array();
    for (const RefRecord& ref : *refs) {
      (ref.is_tag ? tags : branches)
          .push_back({{"name", ref.name}, {"ref", absl::StrCat(ref.is_tag ? "refs/tags/" : "refs/heads/", ref.name)},
                      {"targetCommit", ref.commit_id}});
    }
    response.set_content(json({{"branches", branches}, {"tags", tags}, {"converts", json::array()},
                               {"pullRequests", json::array()}}).dump(),
                         "application/json");
  }

  void Commits(const httplib::Request& request, httplib::Response& response, const RepositoryPath& repository,
               const std::string& revision) {
    if (!OpenRepository(request, response, repository.namespace_name, repository.name, Scope::kRead)) return;
    auto history = registry_.Log(repository.namespace_name, repository.name, revision, 1000);
    if (!history.ok()) return SendError(response, history.status(), "RevisionNotFound");
    json commits = json::array();
    for (const CommitRecord& commit : *history) {
      commits.push_back({{"id", commit.commit_id}, {"title", commit.message.substr(0, commit.message.find('\n'))},
                         {"message", commit.message}, {"authors", json::array({{{"user", commit.author}}})},
                         {"date", IsoTime(commit.created_unix_seconds)}});
    }
    response.set_content(commits.dump(), "application/json");
  }

  void Resolve(const httplib::Request& request, httplib::Response& response, const RepositoryPath& repository,
               const std::string& rest) {
    if (!OpenRepository(request, response, repository.namespace_name, repository.name, Scope::kRead)) return;
    auto resolved = ResolveRevisionAndPath(repository, rest);
    if (!resolved.ok()) {
      // A repository with no commit yet has no file on its default branch: the Hub answers
      // EntryNotFound there (transformers' push_to_hub looks for a README.md in a repo it just made).
      auto record = registry_.GetRepository(repository.namespace_name, repository.name);
      const bool empty_default_branch = record.ok() && record->head_commit.empty() && absl::StartsWith(rest, "main/");
      return SendError(response, resolved.status(), empty_default_branch ? "EntryNotFound" : "RevisionNotFound");
    }
    const auto& [commit, path] = *resolved;
    auto files = registry_.Files(commit);
    if (!files.ok()) return SendError(response, files.status());
    response.set_header("X-Repo-Commit", commit.commit_id);
    auto found = std::find_if(files->begin(), files->end(), [&](const TreeEntry& e) { return e.path == path; });
    if (found == files->end()) {
      return SendError(response, absl::NotFoundError(absl::StrCat("file '", path, "' not found in ",
                                                                  repository.namespace_name, "/", repository.name, "@",
                                                                  commit.commit_id)),
                       "EntryNotFound");
    }
    const TreeEntry entry = *found;
    const std::string etag = absl::StrCat("\"", entry.sha256, "\"");
    response.set_header("ETag", etag);
    response.set_header("X-Linked-Etag", etag);
    response.set_header("X-Linked-Size", std::to_string(entry.size));
    response.set_header("Accept-Ranges", "bytes");
    if (request.method == "HEAD") {
      response.set_header("Content-Length", std::to_string(entry.size));
      // huggingface_hub reads X-Xet-Hash from this HEAD and, with hf_xet, downloads through the CAS.
      xet_.Advertise(request, response, repository.namespace_name, repository.name, commit.commit_id, entry);
      return;
    }
    // The body is written straight from read-only mappings of the blob, 8 MiB at a time: one copy
    // (page cache to socket) per byte and few system calls, where a pread into a buffer and a write
    // of it copy twice. Each window is unmapped once written, so the process's resident memory
    // does not grow with the file. Blobs are immutable and garbage collection only unlinks them.
    // httplib cuts Range requests out of the body.
    int descriptor = open(registry_.blobs().LocalPath(entry.sha256).c_str(), O_RDONLY | O_CLOEXEC);
    if (descriptor < 0) return SendChunkedFile(response, entry, path);
    // A short blob would fault (SIGBUS) when a window past its end is read: refuse it here.
    struct stat status;
    if (fstat(descriptor, &status) != 0 || status.st_size < entry.size) {
      close(descriptor);
      return SendError(response, absl::DataLossError(absl::StrCat("blob ", entry.sha256, " of ", path, " holds ",
                                                                  status.st_size, " bytes, expected ", entry.size)));
    }
    posix_fadvise(descriptor, 0, 0, POSIX_FADV_SEQUENTIAL);
    Metrics().pulls.Add({{"api", "hub"}}).Increment();
    prometheus::Counter* sent = &Metrics().bytes_sent.Add({{"api", "hub"}});
    response.set_content_provider(
        static_cast<size_t>(entry.size), "application/octet-stream",
        [descriptor, sent](size_t offset, size_t length, httplib::DataSink& sink) {
          constexpr size_t kPieceBytes = 8 << 20;
          static const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
          const size_t piece = std::min(length, kPieceBytes);
          const size_t start = offset - offset % page;
          const size_t window_length = offset + piece - start;
          // The next windows read ahead while this one is sent (a blob just pushed is not in the
          // page cache: Note [Direct upload writes] in blob_store.cc).
          posix_fadvise(descriptor, static_cast<off_t>(offset + piece), 2 * kPieceBytes, POSIX_FADV_WILLNEED);
          void* window = mmap(nullptr, window_length, PROT_READ, MAP_SHARED, descriptor, static_cast<off_t>(start));
          if (window == MAP_FAILED) return false;
          madvise(window, window_length, MADV_SEQUENTIAL);
          const bool written = sink.write(static_cast<const char*>(window) + (offset - start), piece);
          munmap(window, window_length);
          if (written) sent->Increment(static_cast<double>(piece));
          return written;
        },
        [descriptor](bool) { close(descriptor); });
  }

  // A file stored as Xet chunks (Note [One store, two views] in xet_store.h), written from the
  // reader's decoded windows; httplib cuts Range requests out of the body as for a blob.
  void SendChunkedFile(httplib::Response& response, const TreeEntry& entry, const std::string& path) {
    absl::StatusOr<std::unique_ptr<XetFileReader>> opened = registry_.xet().OpenFile(entry.sha256);
    if (absl::IsNotFound(opened.status())) {
      return SendError(response, absl::DataLossError(absl::StrCat("blob ", entry.sha256, " of ", path, " is missing")));
    }
    if (!opened.ok()) return SendError(response, opened.status());
    if ((*opened)->size() != entry.size) {
      return SendError(response, absl::DataLossError(absl::StrCat("file ", entry.sha256, " of ", path, " holds ",
                                                                  (*opened)->size(), " bytes, expected ", entry.size)));
    }
    Metrics().pulls.Add({{"api", "hub"}}).Increment();
    prometheus::Counter* sent = &Metrics().bytes_sent.Add({{"api", "hub"}});
    std::shared_ptr<XetFileReader> reader = *std::move(opened);
    response.set_content_provider(
        static_cast<size_t>(entry.size), "application/octet-stream",
        [reader, sent](size_t offset, size_t length, httplib::DataSink& sink) {
          absl::StatusOr<absl::string_view> piece = reader->ReadAt(static_cast<int64_t>(offset), static_cast<int64_t>(length));
          if (!piece.ok()) {
            LogWarning("hub download failed", {{"error", std::string(piece.status().message())}});
            return false;
          }
          if (!sink.write(piece->data(), piece->size())) return false;
          sent->Increment(static_cast<double>(piece->size()));
          return true;
        });
  }

  // --- upload side ---

  void CreateRepository(const httplib::Request& request, httplib::Response& response) {
    json body = json::parse(request.body, nullptr, false);
    if (body.is_discarded() || !body.is_object()) {
      return SendError(response, absl::InvalidArgumentError("create repository: the body is not a JSON object"));
    }
    std::string name = body.value("name", "");
    std::string namespace_name = body.contains("organization") && body["organization"].is_string()
                                     ? body["organization"].get<std::string>() : "";
    if (namespace_name.empty() && absl::StrContains(name, "/")) {
      std::vector<std::string> parts = absl::StrSplit(name, absl::MaxSplits('/', 1));
      namespace_name = parts[0];
      name = parts[1];
    }
    const std::string type = body.value("type", "model");
    if (type != "model") {
      return SendError(response, absl::InvalidArgumentError(absl::StrCat(
                                     "create repository: type '", type, "' is not served; this registry holds models")));
    }
    if (namespace_name.empty()) {
      return SendError(response, absl::InvalidArgumentError(
                                     "create repository: give the repository as 'namespace/name' (there are no user accounts)"));
    }
    auto who = Authorize(request, namespace_name, Scope::kWrite);
    if (!who.ok()) return SendError(response, who.status());
    const std::string url = absl::StrCat(BaseUrl(request), "/", namespace_name, "/", name);
    auto record = registry_.CreateRepository(namespace_name, name, 1, false);
    if (absl::IsAlreadyExists(record.status())) {
      SendError(response, record.status());
      response.set_content(json({{"error", std::string(record.status().message())}, {"url", url}}).dump(),
                           "application/json");
      return;
    }
    if (!record.ok()) return SendError(response, record.status());
    response.set_content(json({{"url", url}, {"name", namespace_name + "/" + name}, {"id", namespace_name + "/" + name}}).dump(),
                         "application/json");
  }

  void DeleteRepository(const httplib::Request& request, httplib::Response& response) {
    json body = json::parse(request.body, nullptr, false);
    if (body.is_discarded() || !body.is_object()) {
      return SendError(response, absl::InvalidArgumentError("delete repository: the body is not a JSON object"));
    }
    std::string namespace_name = body.contains("organization") && body["organization"].is_string()
                                     ? body["organization"].get<std::string>() : "";
    std::string name = body.value("name", "");
    if (!OpenRepository(request, response, namespace_name, name, Scope::kWrite)) return;
    if (absl::Status status = registry_.DeleteRepository(namespace_name, name); !status.ok()) {
      return SendError(response, status);
    }
    response.set_content("{}", "application/json");
  }

  void Preupload(const httplib::Request& request, httplib::Response& response, const RepositoryPath& repository) {
    if (!OpenRepository(request, response, repository.namespace_name, repository.name, Scope::kWrite)) return;
    json body = json::parse(request.body, nullptr, false);
    if (body.is_discarded() || !body.contains("files") || !body["files"].is_array()) {
      return SendError(response, absl::InvalidArgumentError("preupload: expected {\"files\": [...]}"));
    }
    json files = json::array();
    for (const json& file : body["files"]) {
      const std::string path = file.value("path", "");
      if (absl::Status status = ValidateRepositoryPath(path); !status.ok()) return SendError(response, status);
      // Every file goes through the LFS batch API into the content-addressed store.
      files.push_back({{"path", path}, {"uploadMode", "lfs"}, {"shouldIgnore", false}});
    }
    response.set_content(json({{"files", files}, {"commitOid", nullptr}}).dump(), "application/json");
  }

  void LfsBatch(const httplib::Request& request, httplib::Response& response, const RepositoryPath& repository) {
    if (!OpenRepository(request, response, repository.namespace_name, repository.name, Scope::kWrite)) return;
    json body = json::parse(request.body, nullptr, false);
    if (body.is_discarded() || body.value("operation", "") != "upload" || !body.contains("objects")) {
      return SendError(response, absl::InvalidArgumentError("LFS batch: expected an upload operation with objects"));
    }
    json objects = json::array();
    std::vector<std::string> digests;
    for (const json& object : body["objects"]) digests.push_back(object.value("oid", ""));
    for (const std::string& digest : digests) {
      if (absl::Status status = ValidateSha256(digest); !status.ok()) return SendError(response, status);
    }
    std::vector<std::string> missing_list = registry_.FindMissingBlobs(digests);
    std::set<std::string> missing(missing_list.begin(), missing_list.end());
    for (const json& object : body["objects"]) {
      const std::string digest = object.value("oid", "");
      const int64_t size = object.value("size", int64_t{0});
      json entry = {{"oid", digest}, {"size", size}, {"authenticated", true}};
      if (missing.count(digest)) {
        std::string ticket = NewTicket(digest, size);
        entry["actions"] = {{"upload", {{"href", absl::StrCat(BaseUrl(request), "/api/lfs-upload/", ticket)},
                                        {"header", json::object()}, {"expires_in", 3600}}}};
      }
      objects.push_back(entry);
    }
    response.set_content(json({{"transfer", "basic"}, {"objects", objects}, {"hash_algo", "sha256"}}).dump(),
                         "application/vnd.git-lfs+json");
  }

  void LfsUpload(const httplib::Request& request, httplib::Response& response, const httplib::ContentReader& reader,
                 const std::string& ticket_id) {
    UploadTicket ticket;
    {
      std::lock_guard lock(tickets_mutex_);
      auto found = tickets_.find(ticket_id);
      if (found == tickets_.end() || found->second.expires < absl::Now()) {
        return SendError(response, absl::PermissionDeniedError(
                                       "LFS upload: unknown or expired upload ticket; ask the LFS batch endpoint again"));
      }
      ticket = found->second;
    }
    auto upload = registry_.blobs().BeginUpload(ticket.sha256, ticket.size, 0);
    if (absl::IsAlreadyExists(upload.status())) {
      reader([](const char*, size_t) { return true; });
      return;
    }
    if (!upload.ok()) return SendError(response, upload.status());
    prometheus::Counter& received = Metrics().bytes_received.Add({{"api", "hub"}});
    absl::Status appended;
    reader([&](const char* data, size_t length) {
      appended = (*upload)->Append(absl::string_view(data, length));
      received.Increment(static_cast<double>(length));
      return appended.ok();
    });
    if (!appended.ok()) return SendError(response, appended);
    if (absl::Status finished = (*upload)->Finish(); !finished.ok()) return SendError(response, finished);
    registry_.BlobStored(ticket.size);
    std::lock_guard lock(tickets_mutex_);
    tickets_.erase(ticket_id);
  }

  void Commit(const httplib::Request& request, httplib::Response& response, const RepositoryPath& repository,
              const std::string& revision) {
    std::string who;
    if (!OpenRepository(request, response, repository.namespace_name, repository.name, Scope::kWrite, &who)) return;
    std::string summary, description;
    std::optional<std::string> parent_commit;
    std::map<std::string, TreeEntry> added;
    std::vector<std::string> deleted_files, deleted_folders;
    for (absl::string_view line : absl::StrSplit(request.body, '\n', absl::SkipWhitespace())) {
      json item = json::parse(line, nullptr, false);
      if (item.is_discarded() || !item.contains("key") || !item.contains("value")) {
        return SendError(response, absl::InvalidArgumentError("commit: each line must be {\"key\":..., \"value\":...}"));
      }
      const std::string key = item["key"];
      const json& value = item["value"];
      if (key == "header") {
        summary = value.value("summary", "");
        description = value.value("description", "");
        if (value.contains("parentCommit") && value["parentCommit"].is_string()) parent_commit = value["parentCommit"];
      } else if (key == "file") {
        std::string content;
        if (value.value("encoding", "base64") != "base64" || !absl::Base64Unescape(value.value("content", ""), &content)) {
          return SendError(response, absl::InvalidArgumentError("commit: file content must be base64"));
        }
        auto stored = StoreBytes(content);
        if (!stored.ok()) return SendError(response, stored.status());
        added[value.value("path", "")] = TreeEntry{value.value("path", ""), static_cast<int64_t>(content.size()), *stored};
      } else if (key == "lfsFile") {
        if (value.value("algo", "sha256") != "sha256") {
          return SendError(response, absl::InvalidArgumentError("commit: lfsFile algo must be sha256"));
        }
        added[value.value("path", "")] =
            TreeEntry{value.value("path", ""), value.value("size", int64_t{0}), value.value("oid", "")};
      } else if (key == "deletedFile") {
        deleted_files.push_back(value.value("path", ""));
      } else if (key == "deletedFolder") {
        std::string folder = value.value("path", "");
        if (!folder.empty() && folder.back() != '/') folder.push_back('/');
        deleted_folders.push_back(folder);
      } else {
        return SendError(response, absl::InvalidArgumentError(absl::StrCat("commit: unsupported operation '", key, "'")));
      }
    }
    const std::string branch = revision.empty() ? "main" : revision;
    const std::string message = description.empty() ? summary : absl::StrCat(summary, "\n\n", description);
    // Without parentCommit the operations apply to whatever the head is: retry if it moves.
    for (int attempt = 0; attempt < 5; ++attempt) {
      std::string head;
      std::map<std::string, TreeEntry> tree;
      auto current = registry_.Resolve(repository.namespace_name, repository.name, branch);
      if (current.ok()) {
        head = current->commit_id;
        auto files = registry_.Files(*current);
        if (!files.ok()) return SendError(response, files.status());
        for (const TreeEntry& entry : *files) tree[entry.path] = entry;
      } else if (!absl::IsNotFound(current.status())) {
        return SendError(response, current.status());
      }
      if (parent_commit && *parent_commit != head) {
        // The client built on a parent that is not the head: refuse instead of merging silently.
        auto parent = registry_.Resolve(repository.namespace_name, repository.name, *parent_commit);
        if (!parent.ok()) return SendError(response, parent.status(), "RevisionNotFound");
        return SendError(response, absl::AbortedError(absl::StrCat("commit to ", repository.namespace_name, "/",
                                                                   repository.name, "@", branch, ": parent ",
                                                                   *parent_commit, " is not the head ", head)));
      }
      for (const std::string& path : deleted_files) tree.erase(path);
      for (const std::string& folder : deleted_folders) {
        for (auto it = tree.begin(); it != tree.end();) it = absl::StartsWith(it->first, folder) ? tree.erase(it) : std::next(it);
      }
      for (const auto& [path, entry] : added) tree[path] = entry;
      std::vector<TreeEntry> files;
      for (auto& [path, entry] : tree) files.push_back(entry);
      auto commit = registry_.CreateCommit(repository.namespace_name, repository.name, branch, head, who, message,
                                           std::move(files));
      if (absl::IsAborted(commit.status()) && !parent_commit) continue;
      if (!commit.ok()) return SendError(response, commit.status());
      Metrics().pushes.Add({{"api", "hub"}}).Increment();
      UpdateStorageGauges(registry_);
      LogInfo("commit created", {{"repository", repository.namespace_name + "/" + repository.name},
                                 {"branch", branch}, {"commit", commit->commit_id}, {"api", "hub"}, {"author", who}});
      response.set_content(json({{"success", true}, {"commitOid", commit->commit_id},
                                 {"commitUrl", absl::StrCat(BaseUrl(request), "/", repository.namespace_name, "/",
                                                            repository.name, "/commit/", commit->commit_id)},
                                 {"pullRequestUrl", nullptr}}).dump(),
                           "application/json");
      return;
    }
    SendError(response, absl::AbortedError(absl::StrCat("commit to ", repository.namespace_name, "/", repository.name,
                                                        "@", branch, ": the branch kept moving; try again")));
  }

  void WhoAmI(const httplib::Request& request, httplib::Response& response) {
    auto who = Authorize(request, "", Scope::kRead);
    std::string name = who.ok() ? *who : "anonymous";
    if (!request.get_header_value("Authorization").empty() && !who.ok() && absl::IsUnauthenticated(who.status())) {
      return SendError(response, who.status());
    }
    response.set_content(json({{"type", "user"}, {"name", name}, {"fullname", name}, {"orgs", json::array()},
                               {"auth", {{"accessToken", {{"role", "write"}}}}}}).dump(),
                         "application/json");
  }

 private:
  absl::StatusOr<std::string> StoreBytes(const std::string& content) {
    const std::string digest = Sha256OfString(content);
    auto upload = registry_.blobs().BeginUpload(digest, content.size(), 0);
    if (absl::IsAlreadyExists(upload.status())) {
      registry_.blobs().Touch(digest).IgnoreError();
      return digest;
    }
    if (!upload.ok()) return upload.status();
    if (absl::Status status = (*upload)->Append(content); !status.ok()) return status;
    if (absl::Status status = (*upload)->Finish(); !status.ok()) return status;
    registry_.BlobStored(content.size());
    return digest;
  }

  std::string NewTicket(const std::string& sha256, int64_t size) {
    std::random_device random;
    std::string ticket = absl::StrCat(absl::Hex(random(), absl::kZeroPad8), absl::Hex(random(), absl::kZeroPad8),
                                      absl::Hex(random(), absl::kZeroPad8), absl::Hex(random(), absl::kZeroPad8));
    std::lock_guard lock(tickets_mutex_);
    const absl::Time now = absl::Now();
    for (auto it = tickets_.begin(); it != tickets_.end();) it = it->second.expires < now ? tickets_.erase(it) : std::next(it);
    tickets_[ticket] = UploadTicket{sha256, size, now + absl::Hours(1)};
    return ticket;
  }

  Registry& registry_;
  const Authorizer& authorizer_;
  std::string public_url_;
  int tree_page_size_;
  std::mutex tickets_mutex_;
  std::map<std::string, UploadTicket> tickets_;
  XetApi xet_;
};

HubApi::HubApi(Registry& registry, const Authorizer& authorizer, std::string public_url, int tree_page_size,
               absl::Duration xet_token_lifetime)
    : handlers_(std::make_shared<HubHandlers>(registry, authorizer, std::move(public_url), tree_page_size,
                                              xet_token_lifetime)) {}

void HubApi::AddRoutes(httplib::Server& server) {
  std::shared_ptr<HubHandlers> handlers = handlers_;
  // Times each route and logs nothing on success (the access log would flood on big pulls).
  auto timed = [](const char* route, auto handler) {
    return [route, handler](const httplib::Request& request, httplib::Response& response) {
      auto start = std::chrono::steady_clock::now();
      handler(request, response);
      Metrics().http_seconds.Add({{"route", route}}, prometheus::Histogram::BucketBoundaries{
                                     0.001, 0.005, 0.02, 0.1, 0.5, 2, 10})
          .Observe(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    };
  };
  constexpr char kPart[] = "([A-Za-z0-9._-]+)";
  auto repository_of = [](const httplib::Request& request) {
    return RepositoryPath{request.matches[1].str(), request.matches[2].str()};
  };
  const std::string api_repository = absl::StrCat("/api/models/", kPart, "/", kPart);

  server.Get(api_repository, timed("model_info", [=](const auto& request, auto& response) {
    handlers->ModelInfo(request, response, repository_of(request), "");
  }));
  server.Get(api_repository + "/revision/(.+)", timed("model_info", [=](const auto& request, auto& response) {
    handlers->ModelInfo(request, response, repository_of(request), request.matches[3].str());
  }));
  server.Get(api_repository + "/tree/(.+)", timed("tree", [=](const auto& request, auto& response) {
    handlers->Tree(request, response, repository_of(request), request.matches[3].str());
  }));
  server.Get(api_repository + "/refs", timed("refs", [=](const auto& request, auto& response) {
    handlers->Refs(request, response, repository_of(request));
  }));
  server.Get(api_repository + "/commits/(.+)", timed("commits", [=](const auto& request, auto& response) {
    handlers->Commits(request, response, repository_of(request), request.matches[3].str());
  }));
  // GET and HEAD (httplib answers HEAD with the GET handler and drops the body).
  server.Get(absl::StrCat("/", kPart, "/", kPart, "/resolve/(.+)"), timed("resolve", [=](const auto& request, auto& response) {
    handlers->Resolve(request, response, repository_of(request), request.matches[3].str());
  }));
  server.Post("/api/repos/create", timed("create_repo", [=](const auto& request, auto& response) {
    handlers->CreateRepository(request, response);
  }));
  server.Delete("/api/repos/delete", timed("delete_repo", [=](const auto& request, auto& response) {
    handlers->DeleteRepository(request, response);
  }));
  server.Post(api_repository + "/preupload/(.+)", timed("preupload", [=](const auto& request, auto& response) {
    handlers->Preupload(request, response, repository_of(request));
  }));
  server.Post(absl::StrCat("/", kPart, "/", kPart, "\\.git/info/lfs/objects/batch"),
              timed("lfs_batch", [=](const auto& request, auto& response) {
                handlers->LfsBatch(request, response, repository_of(request));
              }));
  server.Put("/api/lfs-upload/([0-9a-f]+)",
             [=](const httplib::Request& request, httplib::Response& response, const httplib::ContentReader& reader) {
               handlers->LfsUpload(request, response, reader, request.matches[1].str());
             });
  server.Post(api_repository + "/commit/(.+)", timed("commit", [=](const auto& request, auto& response) {
    handlers->Commit(request, response, repository_of(request), request.matches[3].str());
  }));
  server.Get("/api/whoami-v2", timed("whoami", [=](const auto& request, auto& response) {
    handlers->WhoAmI(request, response);
  }));
  // create_commit validates a README.md's YAML metadata here first; the registry keeps model cards
  // as ordinary files and checks no metadata schema, so every card is accepted.
  server.Post("/api/validate-yaml", [](const httplib::Request&, httplib::Response& response) {
    response.set_content(R"({"errors": [], "warnings": []})", "application/json");
  });
  handlers->xet().AddRoutes(server);
}

}  // namespace flotilla::registry
