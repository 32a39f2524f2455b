// The C++ client of the registry: push a folder, pull a revision into a cache or a folder. Used by
// the flotilla CLI, and by services that load models (worker) or tokenizers (preprocess).
//
//   flotilla::registry::RegistryClient client("127.0.0.1:50051");
//   absl::StatusOr<std::string> directory = client.PullToCache("acme/llama@v1", "/var/cache/flotilla");
//   // *directory == "/var/cache/flotilla/acme/llama/<40-hex commit id>", every file verified by sha256
//
//   absl::StatusOr<PushResult> pushed = client.PushFolder("./llama", "acme", "llama", {.message = "v1"});
//
// Pulls are resumable (a file's bytes so far are kept as <file>.incomplete and continued) and
// verified (sha256 of every file before it is renamed into place, so no half-written file is ever
// visible under its name); a file already complete in the cache is not fetched again; the files of
// a sharded checkpoint download in parallel (up to 4 at once by default). Pushes skip blobs the registry has and resume partial uploads;
// a large file new to the repository is sha256-hashed while it is sent, its digest named last (Note
// [Streamed push] in registry_client.cc).
// One RegistryClient may be used from several threads; each call is independent.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include <absl/status/statusor.h>

namespace grpc {
class Channel;
}

namespace flotilla::registry {

struct TransferProgress {
  std::string path;          // the file being transferred
  int64_t done_bytes = 0;    // over all files of the call
  int64_t total_bytes = 0;
};

struct PushOptions {
  int kind = 1;  // flotilla.v1.RepositoryKind: 1 model, 2 config, 3 kernel
  std::string branch = "main";
  std::string message = "push";
  // Create the repository when it does not exist (as `huggingface-cli upload` does).
  bool create_repository = true;
};

struct PushResult {
  std::string commit_id;
  int64_t files = 0;
  int64_t uploaded_bytes = 0;  // sent over the wire
  int64_t skipped_bytes = 0;   // already in the registry
};

struct PullResult {
  std::string commit_id;
  std::string directory;
  int64_t files = 0;
  int64_t downloaded_bytes = 0;
  int64_t cached_bytes = 0;  // already complete on disk
};

// How to reach the registry: plaintext by default (loopback), TLS when `tls` is set.
struct ConnectionOptions {
  std::string token;  // sent as "authorization: Bearer <token>" when not empty
  bool tls = false;
  // PEM roots to verify the registry's certificate (a private CA); empty: the system's roots.
  std::string tls_root_certificates;
};

// A channel to the registry with the registry client's message limits and frame size.
std::shared_ptr<grpc::Channel> CreateRegistryChannel(const std::string& address, const ConnectionOptions& options);

class RegistryClient {
 public:
  // `token`: sent as "authorization: Bearer <token>" when not empty.
  explicit RegistryClient(const std::string& address, std::string token = "");
  RegistryClient(const std::string& address, const ConnectionOptions& options);
  RegistryClient(std::shared_ptr<grpc::Channel> channel, std::string token);

  // Called after every chunk (for progress bars). A pull calls it from its download threads, one
  // call at a time (under a lock), so it needs no locking of its own but must not block for long.
  void set_progress(std::function<void(const TransferProgress&)> progress) { progress_ = std::move(progress); }

  // How many files a pull downloads at once (Note [Parallel pull] in registry_client.cc); 1 pulls
  // one file after another. Set before pulling.
  void set_max_parallel_files(int files) { max_parallel_files_ = files; }

  // Pushes every regular file under `folder` (except .git/) as one commit on options.branch.
  absl::StatusOr<PushResult> PushFolder(const std::string& folder, const std::string& namespace_name,
                                        const std::string& name, const PushOptions& options = {});

  // Pulls only the files whose repository path it accepts (huggingface_hub's allow_patterns);
  // an empty filter pulls every file.
  using PathFilter = std::function<bool(const std::string& path)>;

  // Downloads "namespace/name[@revision]" into <cache_root>/<namespace>/<name>/<commit id>/ and
  // returns that directory.
  absl::StatusOr<std::string> PullToCache(const std::string& reference, const std::string& cache_root,
                                          const PathFilter& include = nullptr);
  // Same, into `directory` itself.
  absl::StatusOr<PullResult> PullToDirectory(const std::string& reference, const std::string& directory,
                                             const PathFilter& include = nullptr);

  const std::shared_ptr<grpc::Channel>& channel() const { return channel_; }
  const std::string& token() const { return token_; }

 private:
  std::shared_ptr<grpc::Channel> channel_;
  std::string token_;
  std::function<void(const TransferProgress&)> progress_;
  int max_parallel_files_ = 4;
};

}  // namespace flotilla::registry
