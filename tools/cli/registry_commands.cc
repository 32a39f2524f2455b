// flotilla push / pull / ls / log / tag / rm / gc: the registry from the command line.
//
// The registry's address is --registry host:port, else $FLOTILLA_REGISTRY, else the running local
// mesh's (see mesh.h). The token is --token, else $FLOTILLA_TOKEN. --json prints one JSON document
// for scripts; a progress bar appears only when stdout is a terminal.
#include <malloc.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <cstdio>
#include <cstdlib>
#include <memory>

#include <absl/strings/match.h>
#include <absl/strings/str_cat.h>
#include <absl/strings/str_format.h>
#include <grpcpp/grpcpp.h>
#include <nlohmann/json.hpp>

#include "flotilla/v1/registry.grpc.pb.h"
#include "services/common/status.h"
#include "services/registry/names.h"
#include "services/registry/registry_client.h"
#include "tools/cli/commands.h"
#include "tools/cli/mesh.h"

namespace flotilla::cli {
namespace {

using namespace flotilla::v1;
using Clock = std::chrono::steady_clock;

struct RegistryFlags {
  std::string registry;
  std::string token;
  std::string data_directory = DefaultDataDirectory();
  bool as_json = false;
  bool tls = false;
  std::string tls_ca;
};

void AddRegistryFlags(CLI::App* command, const std::shared_ptr<RegistryFlags>& flags) {
  command->add_option("--registry", flags->registry,
                      "Registry gRPC address host:port (default $FLOTILLA_REGISTRY, else the local mesh's)");
  command->add_option("--token", flags->token, "Access token (default $FLOTILLA_TOKEN)");
  command->add_option("--data-dir", flags->data_directory, "The local mesh's data directory");
  command->add_flag("--json", flags->as_json, "Print JSON for scripts");
  command->add_flag("--tls", flags->tls, "Connect with TLS, verifying the registry with the system's roots");
  command->add_option("--tls-ca", flags->tls_ca, "Connect with TLS, verifying the registry with this PEM file "
                                                  "(default $FLOTILLA_TLS_CA)");
}

[[noreturn]] void Fail(const absl::Status& status) {
  // Exit codes: 2 bad input, 3 not found, 4 conflict (retry after pulling), 5 permission, 1 other.
  int code = 1;
  switch (status.code()) {
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kOutOfRange: code = 2; break;
    case absl::StatusCode::kNotFound: code = 3; break;
    case absl::StatusCode::kAborted:
    case absl::StatusCode::kAlreadyExists: code = 4; break;
    case absl::StatusCode::kUnauthenticated:
    case absl::StatusCode::kPermissionDenied: code = 5; break;
    default: break;
  }
  throw CommandFailed(code, absl::StrCat(absl::StatusCodeToString(status.code()), ": ", status.message()));
}

std::string Address(const RegistryFlags& flags) {
  absl::StatusOr<std::string> address = RegistryAddress(flags.registry, flags.data_directory);
  if (!address.ok()) Fail(address.status());
  return *address;
}

std::string Token(const RegistryFlags& flags) {
  if (!flags.token.empty()) return flags.token;
  const char* token = std::getenv("FLOTILLA_TOKEN");
  return token ? token : "";
}

registry::ConnectionOptions Connection(const RegistryFlags& flags) {
  absl::StatusOr<registry::ConnectionOptions> options = RegistryConnection(flags.tls, flags.tls_ca, Token(flags));
  if (!options.ok()) Fail(options.status());
  return *options;
}

std::unique_ptr<RegistryService::Stub> Stub(const RegistryFlags& flags) {
  return RegistryService::NewStub(registry::CreateRegistryChannel(Address(flags), Connection(flags)));
}

void Authorize(grpc::ClientContext& context, const RegistryFlags& flags) {
  if (std::string token = Token(flags); !token.empty()) context.AddMetadata("authorization", "Bearer " + token);
}

void Check(const grpc::Status& status) {
  if (!status.ok()) Fail(FromGrpcStatus(status));
}

std::string HumanBytes(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int unit = 0;
  while (bytes >= 1024 && unit < 4) {
    bytes /= 1024;
    ++unit;
  }
  return absl::StrFormat(unit == 0 ? "%.0f %s" : "%.1f %s", bytes, units[unit]);
}

// A one-line progress bar on a terminal: bytes, rate and ETA, redrawn at most 10 times a second.
class ProgressBar {
 public:
  explicit ProgressBar(bool enabled) : enabled_(enabled && isatty(STDOUT_FILENO)) {}
  void Update(const registry::TransferProgress& progress) {
    if (!enabled_) return;
    auto now = Clock::now();
    if (now - last_draw_ < std::chrono::milliseconds(100) && progress.done_bytes < progress.total_bytes) return;
    last_draw_ = now;
    double seconds = std::chrono::duration<double>(now - start_).count();
    double rate = seconds > 0 ? progress.done_bytes / seconds : 0;
    double fraction = progress.total_bytes > 0 ? static_cast<double>(progress.done_bytes) / progress.total_bytes : 1;
    int filled = static_cast<int>(fraction * 30);
    std::string bar = std::string(filled, '#') + std::string(30 - filled, '.');
    std::string eta = rate > 0 ? absl::StrFormat("%.0fs", (progress.total_bytes - progress.done_bytes) / rate) : "?";
    std::printf("\r[%s] %s / %s  %s/s  ETA %s  %-30.30s", bar.c_str(), HumanBytes(progress.done_bytes).c_str(),
                HumanBytes(progress.total_bytes).c_str(), HumanBytes(rate).c_str(), eta.c_str(), progress.path.c_str());
    std::fflush(stdout);
    drawn_ = true;
  }
  void Done() {
    if (drawn_) std::printf("\n");
  }

 private:
  bool enabled_;
  bool drawn_ = false;
  Clock::time_point start_ = Clock::now();
  Clock::time_point last_draw_;
};

registry::ParsedReference Reference(const std::string& text) {
  auto reference = registry::ParseReference(text);
  if (!reference.ok()) Fail(reference.status());
  return *reference;
}

void Print(const nlohmann::json& document) { std::printf("%s\n", document.dump(2).c_str()); }

void Push(const RegistryFlags& flags, const std::string& folder, const std::string& repository,
          const std::string& kind, const std::string& branch, const std::string& message) {
  registry::ParsedReference reference = Reference(repository);
  if (!reference.revision.empty()) {
    Fail(absl::InvalidArgumentError("push: give the branch with --revision, not '@' in the repository name"));
  }
  registry::PushOptions options;
  options.kind = kind == "config" ? 2 : kind == "kernel" ? 3 : 1;
  options.branch = branch;
  options.message = message.empty() ? absl::StrCat("push ", folder) : message;
  registry::RegistryClient client(Address(flags), Connection(flags));
  ProgressBar bar(!flags.as_json);
  client.set_progress([&](const registry::TransferProgress& progress) { bar.Update(progress); });
  auto start = Clock::now();
  absl::StatusOr<registry::PushResult> result = client.PushFolder(folder, reference.namespace_name, reference.name, options);
  bar.Done();
  if (!result.ok()) Fail(result.status());
  double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  if (flags.as_json) {
    Print({{"repository", repository}, {"branch", branch}, {"commit_id", result->commit_id}, {"files", result->files},
           {"uploaded_bytes", result->uploaded_bytes}, {"skipped_bytes", result->skipped_bytes}, {"seconds", seconds}});
  } else {
    std::printf("pushed %s@%s: commit %s (%lld files, %s uploaded, %s already there)\n", repository.c_str(),
                branch.c_str(), result->commit_id.c_str(), static_cast<long long>(result->files),
                HumanBytes(result->uploaded_bytes).c_str(), HumanBytes(result->skipped_bytes).c_str());
  }
}

// A pull receives about a GiB a second into gRPC's buffers of up to a few MiB each. glibc hands
// buffers that large out as fresh mmaps (and gives the heap's top back to the kernel as they are
// freed), so every received page would be faulted in and zeroed again: with these limits the
// freed buffers are reused instead. Measured on a 256 MiB pull: 26,699 page faults and 469 ms of
// CPU before, 13,232 and 354 ms after (curl fetching the same file: 340 ms).
void KeepLargeBuffersInTheHeap() {
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 256 << 20);
}

void Pull(const RegistryFlags& flags, const std::string& reference_text, const std::string& directory,
          int parallel_files) {
  Reference(reference_text);
  if (parallel_files < 1) {
    Fail(absl::InvalidArgumentError(absl::StrCat("pull: --parallel must be at least 1, got ", parallel_files)));
  }
  KeepLargeBuffersInTheHeap();
  registry::RegistryClient client(Address(flags), Connection(flags));
  client.set_max_parallel_files(parallel_files);
  ProgressBar bar(!flags.as_json);
  client.set_progress([&](const registry::TransferProgress& progress) { bar.Update(progress); });
  absl::StatusOr<registry::PullResult> result = client.PullToDirectory(reference_text, directory);
  bar.Done();
  if (!result.ok()) Fail(result.status());
  if (flags.as_json) {
    Print({{"reference", reference_text}, {"commit_id", result->commit_id}, {"directory", result->directory},
           {"files", result->files}, {"downloaded_bytes", result->downloaded_bytes}, {"cached_bytes", result->cached_bytes}});
  } else {
    std::printf("pulled %s (commit %s) into %s: %lld files, %s downloaded\n", reference_text.c_str(),
                result->commit_id.c_str(), directory.c_str(), static_cast<long long>(result->files),
                HumanBytes(result->downloaded_bytes).c_str());
  }
}

const char* KindName(int kind) { return kind == 2 ? "config" : kind == 3 ? "kernel" : "model"; }

void List(const RegistryFlags& flags, const std::string& target, const std::string& filter) {
  auto stub = Stub(flags);
  if (target.empty()) {
    nlohmann::json repositories = nlohmann::json::array();
    ListRepositoriesRequest request;
    request.set_name_filter(filter);
    request.set_page_size(500);
    do {
      grpc::ClientContext context;
      Authorize(context, flags);
      ListRepositoriesResponse response;
      Check(stub->ListRepositories(&context, request, &response));
      for (const Repository& repository : response.repositories()) {
        repositories.push_back({{"repository", repository.namespace_() + "/" + repository.name()},
                                {"kind", KindName(repository.kind())}, {"head_commit", repository.head_commit()}});
      }
      request.set_page_token(response.next_page_token());
    } while (!request.page_token().empty());
    if (flags.as_json) return Print({{"repositories", repositories}});
    for (const auto& repository : repositories) {
      std::string head = repository["head_commit"];
      std::printf("%-40s %-7s %s\n", repository["repository"].get<std::string>().c_str(),
                  repository["kind"].get<std::string>().c_str(), head.empty() ? "(empty)" : head.substr(0, 12).c_str());
    }
    return;
  }
  registry::ParsedReference reference = Reference(target);
  grpc::ClientContext context;
  Authorize(context, flags);
  ListFilesRequest request;
  request.mutable_reference()->set_namespace_(reference.namespace_name);
  request.mutable_reference()->set_name(reference.name);
  request.mutable_reference()->set_revision(reference.revision);
  ListFilesResponse response;
  Check(stub->ListFiles(&context, request, &response));
  if (flags.as_json) {
    nlohmann::json files = nlohmann::json::array();
    for (const FileEntry& file : response.files()) {
      files.push_back({{"path", file.path()}, {"size", file.size()}, {"sha256", file.sha256()}});
    }
    return Print({{"commit_id", response.commit_id()}, {"files", files}});
  }
  std::printf("commit %s\n", response.commit_id().c_str());
  for (const FileEntry& file : response.files()) {
    std::printf("%12s  %s  %s\n", HumanBytes(file.size()).c_str(), file.sha256().substr(0, 12).c_str(), file.path().c_str());
  }
}

void Log(const RegistryFlags& flags, const std::string& target, int limit) {
  registry::ParsedReference reference = Reference(target);
  auto stub = Stub(flags);
  grpc::ClientContext context;
  Authorize(context, flags);
  ListCommitsRequest request;
  request.mutable_reference()->set_namespace_(reference.namespace_name);
  request.mutable_reference()->set_name(reference.name);
  request.mutable_reference()->set_revision(reference.revision);
  request.set_limit(limit);
  ListCommitsResponse response;
  Check(stub->ListCommits(&context, request, &response));
  nlohmann::json commits = nlohmann::json::array();
  for (const Commit& commit : response.commits()) {
    commits.push_back({{"commit_id", commit.commit_id()}, {"parent_ids", std::vector<std::string>(
                           commit.parent_ids().begin(), commit.parent_ids().end())},
                       {"author", commit.author()}, {"message", commit.message()},
                       {"created_unix_seconds", commit.created_unix_seconds()}});
  }
  if (flags.as_json) return Print({{"commits", commits}});
  for (const Commit& commit : response.commits()) {
    std::time_t time = commit.created_unix_seconds();
    char when[32];
    std::strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S", std::gmtime(&time));
    std::printf("commit %s\nAuthor: %s\nDate:   %s UTC\n\n    %s\n\n", commit.commit_id().c_str(),
                commit.author().c_str(), when, commit.message().c_str());
  }
}

void Tag(const RegistryFlags& flags, const std::string& target, const std::string& tag, bool remove) {
  registry::ParsedReference reference = Reference(target);
  auto stub = Stub(flags);
  grpc::ClientContext context;
  Authorize(context, flags);
  if (remove) {
    DeleteTagRequest request;
    request.set_namespace_(reference.namespace_name);
    request.set_name(reference.name);
    request.set_tag(tag);
    DeleteTagResponse response;
    Check(stub->DeleteTag(&context, request, &response));
    if (flags.as_json) return Print({{"deleted_tag", tag}});
    std::printf("deleted tag %s of %s/%s\n", tag.c_str(), reference.namespace_name.c_str(), reference.name.c_str());
    return;
  }
  CreateTagRequest request;
  request.mutable_reference()->set_namespace_(reference.namespace_name);
  request.mutable_reference()->set_name(reference.name);
  request.mutable_reference()->set_revision(reference.revision);
  request.set_tag(tag);
  Ref response;
  Check(stub->CreateTag(&context, request, &response));
  if (flags.as_json) return Print({{"tag", response.name()}, {"commit_id", response.commit_id()}});
  std::printf("tagged %s/%s@%s as %s\n", reference.namespace_name.c_str(), reference.name.c_str(),
              response.commit_id().c_str(), tag.c_str());
}

void Remove(const RegistryFlags& flags, const std::string& target) {
  registry::ParsedReference reference = Reference(target);
  auto stub = Stub(flags);
  grpc::ClientContext context;
  Authorize(context, flags);
  DeleteRepositoryRequest request;
  request.set_namespace_(reference.namespace_name);
  request.set_name(reference.name);
  DeleteRepositoryResponse response;
  Check(stub->DeleteRepository(&context, request, &response));
  if (flags.as_json) return Print({{"deleted", target}});
  std::printf("deleted %s (its blobs go at the next `flotilla gc`)\n", target.c_str());
}

void CollectGarbage(const RegistryFlags& flags, bool dry_run) {
  auto stub = Stub(flags);
  grpc::ClientContext context;
  Authorize(context, flags);
  CollectGarbageRequest request;
  request.set_dry_run(dry_run);
  CollectGarbageResponse response;
  Check(stub->CollectGarbage(&context, request, &response));
  if (flags.as_json) {
    return Print({{"dry_run", dry_run}, {"deleted_blobs", response.deleted_blobs()},
                  {"freed_bytes", response.freed_bytes()}, {"kept_blobs", response.kept_blobs()},
                  {"deleted_partials", response.deleted_partials()}});
  }
  std::printf("%s %lld blobs (%s), kept %lld\n", dry_run ? "would delete" : "deleted",
              static_cast<long long>(response.deleted_blobs()), HumanBytes(response.freed_bytes()).c_str(),
              static_cast<long long>(response.kept_blobs()));
}

}  // namespace

absl::StatusOr<registry::ConnectionOptions> RegistryConnection(bool tls, const std::string& tls_ca, const std::string& token) {
  registry::ConnectionOptions options;
  options.token = token;
  std::string ca = tls_ca;
  if (ca.empty()) {
    if (const char* from_environment = std::getenv("FLOTILLA_TLS_CA"); from_environment && *from_environment) ca = from_environment;
  }
  options.tls = tls || !ca.empty();
  if (!ca.empty()) {
    std::ifstream stream(ca, std::ios::binary);
    std::stringstream contents;
    contents << stream.rdbuf();
    if (!stream || contents.str().find("-----BEGIN CERTIFICATE-----") == std::string::npos) {
      return absl::InvalidArgumentError(absl::StrCat("--tls-ca ", ca, ": not a readable PEM certificate file"));
    }
    options.tls_root_certificates = contents.str();
  }
  return options;
}

std::string ModelCacheDirectory(const std::string& data_directory) {
  if (const char* cache = std::getenv("FLOTILLA_CACHE"); cache && *cache) return cache;
  return (std::filesystem::path(data_directory) / "cache").string();
}

std::string LocalModelFolder(const std::string& folder_or_reference, const std::string& registry_address,
                             const std::string& data_directory, bool weights) {
  std::error_code error;
  if (std::filesystem::is_directory(folder_or_reference, error)) return folder_or_reference;
  if (!registry::ParseReference(folder_or_reference).ok()) {
    throw CommandFailed(2, absl::StrCat(folder_or_reference, " is neither a folder nor a registry reference namespace/name[@revision]"));
  }
  absl::StatusOr<std::string> address = RegistryAddress(registry_address, data_directory);
  if (!address.ok()) Fail(address.status());
  const char* token = std::getenv("FLOTILLA_TOKEN");
  absl::StatusOr<registry::ConnectionOptions> connection = RegistryConnection(false, "", token ? token : "");
  if (!connection.ok()) Fail(connection.status());
  registry::RegistryClient client(*address, *connection);
  registry::RegistryClient::PathFilter small_files = [](const std::string& path) {
    static const std::vector<std::string> kWeightSuffixes = {".safetensors", ".bin", ".pt", ".pth", ".gguf", ".onnx", ".h5", ".msgpack"};
    for (const std::string& suffix : kWeightSuffixes) {
      if (absl::EndsWith(path, suffix)) return false;
    }
    return path != "model.safetensors.index.json";
  };
  absl::StatusOr<std::string> folder =
      client.PullToCache(folder_or_reference, ModelCacheDirectory(data_directory), weights ? nullptr : small_files);
  if (!folder.ok()) Fail(folder.status());
  return *folder;
}

void AddModelSourceFlags(CLI::App* command, ModelSourceFlags& flags) {
  command->add_option("--registry", flags.registry,
                      "registry gRPC address for references (default $FLOTILLA_REGISTRY, else the local mesh's)");
  command->add_option("--data-dir", flags.data_directory, "the local mesh's data directory");
}

absl::StatusOr<std::string> RegistryAddress(const std::string& explicit_address, const std::string& data_directory) {
  if (!explicit_address.empty()) return explicit_address;
  if (const char* address = std::getenv("FLOTILLA_REGISTRY"); address && *address) return std::string(address);
  absl::StatusOr<std::string> address = RunningServiceAddress(data_directory, "registry");
  if (!address.ok()) {
    return absl::FailedPreconditionError(absl::StrCat("no registry address: pass --registry host:port, set "
                                                      "FLOTILLA_REGISTRY, or start the local mesh (`flotilla up`): ",
                                                      address.status().message()));
  }
  return *address;
}

void AddRegistryCommands(CLI::App& app) {
  {
    auto flags = std::make_shared<RegistryFlags>();
    auto folder = std::make_shared<std::string>();
    auto repository = std::make_shared<std::string>();
    auto kind = std::make_shared<std::string>("model");
    auto branch = std::make_shared<std::string>("main");
    auto message = std::make_shared<std::string>();
    CLI::App* push = app.add_subcommand("push", "Push a folder to the registry as one commit");
    push->add_option("folder", *folder, "The folder to push")->required();
    push->add_option("repository", *repository, "namespace/name (created if missing)")->required();
    push->add_option("--kind", *kind, "model, config or kernel")->check(CLI::IsMember({"model", "config", "kernel"}));
    push->add_option("--revision", *branch, "The branch to commit to");
    push->add_option("--message,-m", *message, "The commit message");
    AddRegistryFlags(push, flags);
    push->callback([=] { Push(*flags, *folder, *repository, *kind, *branch, *message); });
  }
  {
    auto flags = std::make_shared<RegistryFlags>();
    auto reference = std::make_shared<std::string>();
    auto directory = std::make_shared<std::string>();
    CLI::App* pull = app.add_subcommand("pull", "Download a revision into a folder (resumable, verified)");
    pull->add_option("reference", *reference, "namespace/name[@revision]")->required();
    pull->add_option("directory", *directory, "Where to put the files")->required();
    auto parallel_files = std::make_shared<int>(4);
    pull->add_option("--parallel", *parallel_files, "How many files to download at once (default 4)");
    AddRegistryFlags(pull, flags);
    pull->callback([=] { Pull(*flags, *reference, *directory, *parallel_files); });
  }
  {
    auto flags = std::make_shared<RegistryFlags>();
    auto target = std::make_shared<std::string>();
    auto filter = std::make_shared<std::string>();
    CLI::App* ls = app.add_subcommand("ls", "List repositories, or the files of namespace/name[@revision]");
    ls->add_option("reference", *target, "namespace/name[@revision]; none lists repositories");
    ls->add_option("--filter", *filter, "Only repositories whose name contains this");
    AddRegistryFlags(ls, flags);
    ls->callback([=] { List(*flags, *target, *filter); });
  }
  {
    auto flags = std::make_shared<RegistryFlags>();
    auto target = std::make_shared<std::string>();
    auto limit = std::make_shared<int>(20);
    CLI::App* log = app.add_subcommand("log", "The commit history of namespace/name[@revision]");
    log->add_option("reference", *target, "namespace/name[@revision]")->required();
    log->add_option("--limit,-n", *limit, "At most this many commits");
    AddRegistryFlags(log, flags);
    log->callback([=] { Log(*flags, *target, *limit); });
  }
  {
    auto flags = std::make_shared<RegistryFlags>();
    auto target = std::make_shared<std::string>();
    auto tag = std::make_shared<std::string>();
    auto remove = std::make_shared<bool>(false);
    CLI::App* tag_command = app.add_subcommand("tag", "Tag namespace/name[@revision], or delete a tag");
    tag_command->add_option("reference", *target, "namespace/name[@revision]")->required();
    tag_command->add_option("tag", *tag, "The tag name")->required();
    tag_command->add_flag("--delete,-d", *remove, "Delete the tag instead");
    AddRegistryFlags(tag_command, flags);
    tag_command->callback([=] { Tag(*flags, *target, *tag, *remove); });
  }
  {
    auto flags = std::make_shared<RegistryFlags>();
    auto target = std::make_shared<std::string>();
    CLI::App* rm = app.add_subcommand("rm", "Delete a repository (its history and refs)");
    rm->add_option("repository", *target, "namespace/name")->required();
    AddRegistryFlags(rm, flags);
    rm->callback([=] { Remove(*flags, *target); });
  }
  {
    auto flags = std::make_shared<RegistryFlags>();
    auto dry_run = std::make_shared<bool>(false);
    CLI::App* gc = app.add_subcommand("gc", "Delete blobs that no commit references");
    gc->add_flag("--dry-run", *dry_run, "Report what would be deleted");
    AddRegistryFlags(gc, flags);
    gc->callback([=] { CollectGarbage(*flags, *dry_run); });
  }
}

}  // namespace flotilla::cli
