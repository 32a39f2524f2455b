#include "services/registry/registry_client.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <climits>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include <absl/strings/str_cat.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/impl/rpc_method.h>
#include <grpcpp/support/sync_stream.h>

#include "flotilla/v1/registry.grpc.pb.h"
#include "services/common/status.h"
#include "services/registry/blob_store.h"
#include "services/registry/direct_writes.h"
#include "services/registry/names.h"
#include "services/registry/remembered_digest.h"
#include "services/registry/xet_chunker.h"
#include "services/registry/xet_format.h"

namespace flotilla::registry {
namespace {

namespace fs = std::filesystem;
using namespace flotilla::v1;

constexpr int64_t kChunkBytes = 1 << 20;
constexpr int kAttempts = 4;

absl::Status ErrnoError(absl::string_view operation, const std::string& path) {
  return absl::InternalError(absl::StrCat(operation, "(", path, "): ", std::strerror(errno)));
}

// Reads up to `length` bytes at `offset`, retrying short reads and EINTR; fewer only at the end of
// the file or on an error (a file that changed while it was pushed).
int64_t PreadFully(int descriptor, char* data, int64_t length, int64_t offset) {
  int64_t filled = 0;
  while (filled < length) {
    ssize_t got = pread(descriptor, data + filled, static_cast<size_t>(length - filled), offset + filled);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) break;
    filled += got;
  }
  return filled;
}

bool Retryable(const absl::Status& status) {
  return absl::IsUnavailable(status) || absl::IsDeadlineExceeded(status) || absl::IsInternal(status) ||
         absl::IsCancelled(status) || absl::IsResourceExhausted(status);
}

struct LocalFile {
  std::string path;       // repository path
  std::string full_path;  // on disk
  int64_t size = 0;
  std::string sha256;
};

}  // namespace

std::shared_ptr<grpc::Channel> CreateRegistryChannel(const std::string& address, const ConnectionOptions& options) {
  grpc::ChannelArguments arguments;
  arguments.SetMaxReceiveMessageSize(64 << 20);
  arguments.SetMaxSendMessageSize(64 << 20);
  // Larger HTTP/2 frames from the registry: fewer frames (and wakeups) per MiB pulled.
  arguments.SetInt(GRPC_ARG_HTTP2_MAX_FRAME_SIZE, 4 << 20);
  std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::InsecureChannelCredentials();
  if (options.tls) {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = options.tls_root_certificates;
    credentials = grpc::SslCredentials(ssl);
  }
  return grpc::CreateCustomChannel(address, credentials, arguments);
}

RegistryClient::RegistryClient(const std::string& address, std::string token)
    : RegistryClient(CreateRegistryChannel(address, {}), std::move(token)) {}

RegistryClient::RegistryClient(const std::string& address, const ConnectionOptions& options)
    : RegistryClient(CreateRegistryChannel(address, options), options.token) {}

RegistryClient::RegistryClient(std::shared_ptr<grpc::Channel> channel, std::string token)
    : channel_(std::move(channel)), token_(std::move(token)) {}

namespace {

void Authorize(grpc::ClientContext& context, const std::string& token) {
  if (!token.empty()) context.AddMetadata("authorization", absl::StrCat("Bearer ", token));
}

// Streams [offset, size) of one file as one UploadBlob call; returns the bytes the registry holds.
absl::StatusOr<UploadBlobResponse> UploadOnce(RegistryService::Stub& stub, const std::string& token,
                                              const LocalFile& file, const std::string& namespace_name,
                                              const std::string& name, int64_t offset,
                                              const std::function<void(int64_t)>& sent) {
  int descriptor = open(file.full_path.c_str(), O_RDONLY | O_CLOEXEC);
  if (descriptor < 0) return ErrnoError("open", file.full_path);
  posix_fadvise(descriptor, offset, 0, POSIX_FADV_SEQUENTIAL);
  grpc::ClientContext context;
  Authorize(context, token);
  UploadBlobResponse response;
  std::unique_ptr<grpc::ClientWriter<UploadBlobRequest>> writer = stub.UploadBlob(&context, &response);
  UploadBlobRequest request;
  request.set_sha256(file.sha256);
  request.set_size(file.size);
  request.set_offset(offset);
  request.set_namespace_(namespace_name);
  request.set_name(name);
  absl::Status local_error;
  bool first = true;
  while (first || offset < file.size) {
    int64_t length = std::min(kChunkBytes, file.size - offset);
    std::string* data = request.mutable_data();
    data->resize(length);
    if (PreadFully(descriptor, data->data(), length, offset) != length) {
      local_error = absl::FailedPreconditionError(absl::StrCat("push ", file.path, ": the file changed while pushing"));
      break;
    }
    if (!writer->Write(request)) break;  // the server ended the call early; Finish says why
    offset += length;
    sent(length);
    if (first) {
      first = false;
      request.Clear();
    }
  }
  close(descriptor);
  if (!local_error.ok()) {
    context.TryCancel();
    writer->Finish().ok();
    return local_error;
  }
  writer->WritesDone();
  grpc::Status status = writer->Finish();
  if (!status.ok()) return FromGrpcStatus(status);
  return response;
}

// Note [Streamed push]: a plain UploadBlob names the blob by its sha256 in its first message, so the
// client hashed the whole file before sending a byte: a 1 GiB push was one sha256 pass (0.6 s at
// OpenSSL's 1.7 GiB/s with SHA-NI here) longer than its upload. A large file whose digest cannot
// buy anything up front (a path new to the repository, whose first chunks no stored xorb holds, and
// no other file of the push has its size) is streamed instead: the first message names an upload
// id (derived from the file's path, size, inode and mtime, so an interrupted push finds its partial
// upload again), the bytes follow, read into a ring of buffers that a second thread sha256es in
// order while the main thread sends them, and the digest goes in a message of its own after the
// last byte. The registry hashes as it receives (as for any upload), writes to a partial file
// under the id's key, and checks the digest at the end: DATA_LOSS and nothing stored on a
// mismatch; the blob appears under its sha256 only then (fsync, rename), so a SIGKILL on either
// side leaves at most a partial upload, which the next push resumes (FindMissingBlobs by upload
// id). The files whose digest is cheap to use keep hashing first: a path the parent commit has
// (a re-push: FindMissingBlobs skips it, or the chunked push sends the changed chunks), a file
// whose start is stored (a copy of stored content: skipped whole), a file of the same size as
// another (two paths with the same bytes upload once), and files under 8 MiB.
constexpr int64_t kStreamedPushMinimumBytes = 8 << 20;
constexpr size_t kStreamedPushBuffers = 4;

// The upload id of a streamed file: the same on every attempt while the file is unchanged.
std::string StreamedUploadId(const LocalFile& file) {
  struct stat status {};
  stat(file.full_path.c_str(), &status);
  std::error_code error;
  const std::string absolute = fs::absolute(file.full_path, error).string();
  return absl::StrCat("push-", Sha256OfString(absl::StrCat(absolute, "\n", status.st_size, "\n", status.st_dev, ":",
                                                           status.st_ino, "\n", status.st_mtim.tv_sec, ".",
                                                           status.st_mtim.tv_nsec))
                                   .substr(0, 40));
}

// Hashes a streamed file in order on a second thread: first [0, prefix) read from the file (a
// resumed upload's bytes the registry holds already), then each buffer handed over by Submit.
// Buffers are released in order; `Hashed` counts them.
class StreamHasher {
 public:
  StreamHasher(int descriptor, int64_t prefix, std::string path)
      : descriptor_(descriptor), prefix_(prefix), path_(std::move(path)), thread_([this] { Run(); }) {}
  ~StreamHasher() {
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
    }
    changed_.notify_all();
    thread_.join();
  }
  void Submit(absl::string_view bytes) {
    std::lock_guard lock(mutex_);
    pending_.push_back(bytes);
    ++submitted_;
    changed_.notify_all();
  }
  // Blocks until at most `in_flight` submitted buffers are not hashed yet.
  void WaitUntilPendingAtMost(size_t in_flight) {
    std::unique_lock lock(mutex_);
    changed_.wait(lock, [&] { return submitted_ - hashed_ <= in_flight; });
  }
  // The digest of the prefix and every submitted buffer (waits for them).
  absl::StatusOr<std::string> Digest() {
    WaitUntilPendingAtMost(0);
    std::unique_lock lock(mutex_);
    changed_.wait(lock, [&] { return prefix_done_; });
    if (!error_.ok()) return error_;
    return hasher_.HexDigest();
  }

 private:
  void Run() {
    if (prefix_ > 0) {
      std::string buffer(1 << 20, '\0');
      int64_t offset = 0;
      while (offset < prefix_) {
        ssize_t got = pread(descriptor_, buffer.data(), std::min<int64_t>(buffer.size(), prefix_ - offset), offset);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) {
          std::lock_guard lock(mutex_);
          error_ = absl::FailedPreconditionError(absl::StrCat("push ", path_, ": the file changed while pushing"));
          break;
        }
        hasher_.Update(absl::string_view(buffer.data(), static_cast<size_t>(got)));
        offset += got;
      }
    }
    std::unique_lock lock(mutex_);
    prefix_done_ = true;
    changed_.notify_all();
    while (true) {
      changed_.wait(lock, [&] { return !pending_.empty() || stopping_; });
      if (pending_.empty()) return;
      const absl::string_view bytes = pending_.front();
      lock.unlock();
      hasher_.Update(bytes);
      lock.lock();
      pending_.pop_front();
      ++hashed_;
      changed_.notify_all();
    }
  }

  const int descriptor_;
  const int64_t prefix_;
  const std::string path_;
  Sha256 hasher_;  // used by the thread only, then by Digest once the thread is idle
  std::mutex mutex_;
  std::condition_variable changed_;
  std::deque<absl::string_view> pending_;  // guarded by mutex_
  size_t submitted_ = 0;                   // guarded by mutex_
  size_t hashed_ = 0;                      // guarded by mutex_
  bool prefix_done_ = false;               // guarded by mutex_
  bool stopping_ = false;                  // guarded by mutex_
  absl::Status error_;                     // guarded by mutex_
  std::thread thread_;                     // last: starts once the rest exists
};

// Streams [offset, size) of one file under `upload_id` and names its sha256 last (Note [Streamed
// push]); returns what the registry holds (with the sha256 once complete).
absl::StatusOr<UploadBlobResponse> UploadStreamedOnce(RegistryService::Stub& stub, const std::string& token,
                                                      const LocalFile& file, const std::string& namespace_name,
                                                      const std::string& name, const std::string& upload_id,
                                                      int64_t offset, const std::function<void(int64_t)>& sent,
                                                      std::string* sha256) {
  int descriptor = open(file.full_path.c_str(), O_RDONLY | O_CLOEXEC);
  if (descriptor < 0) return ErrnoError("open", file.full_path);
  posix_fadvise(descriptor, 0, 0, POSIX_FADV_SEQUENTIAL);
  struct Close {
    int descriptor;
    ~Close() { close(descriptor); }
  } close_descriptor{descriptor};
  grpc::ClientContext context;
  Authorize(context, token);
  UploadBlobResponse response;
  std::unique_ptr<grpc::ClientWriter<UploadBlobRequest>> writer = stub.UploadBlob(&context, &response);
  absl::Status local_error;
  bool writing = true;
  {
    StreamHasher hasher(descriptor, offset, file.path);  // joined before the buffers go
    std::vector<std::string> buffers(kStreamedPushBuffers);
    UploadBlobRequest request;
    request.set_size(file.size);
    request.set_offset(offset);
    request.set_namespace_(namespace_name);
    request.set_name(name);
    request.set_upload_id(upload_id);
    bool first = true;
    for (size_t sequence = 0; first || offset < file.size; ++sequence) {
      const int64_t length = std::min(kChunkBytes, file.size - offset);
      // The buffer's last use was kStreamedPushBuffers messages ago; wait until it is hashed.
      hasher.WaitUntilPendingAtMost(kStreamedPushBuffers - 1);
      std::string& buffer = buffers[sequence % kStreamedPushBuffers];
      buffer.resize(static_cast<size_t>(length));
      if (PreadFully(descriptor, buffer.data(), length, offset) != length) {
        local_error = absl::FailedPreconditionError(absl::StrCat("push ", file.path, ": the file changed while pushing"));
        break;
      }
      hasher.Submit(buffer);
      // The message borrows the buffer's bytes (the hashing thread only reads them) for as long
      // as Write takes to serialize it.
      request.mutable_data()->swap(buffer);
      const bool written = writer->Write(request);
      request.mutable_data()->swap(buffer);
      if (!written) {  // the server ended the call early; Finish says why
        writing = false;
        break;
      }
      offset += length;
      sent(length);
      if (first) {
        first = false;
        request.Clear();
      }
    }
    if (local_error.ok() && writing) {
      absl::StatusOr<std::string> digest = hasher.Digest();
      if (!digest.ok()) {
        local_error = digest.status();
      } else {
        *sha256 = *digest;
        UploadBlobRequest last;
        last.set_sha256(*digest);
        writing = writer->Write(last);
      }
    }
  }
  if (!local_error.ok()) {
    context.TryCancel();
    writer->Finish().ok();
    return local_error;
  }
  if (writing) writer->WritesDone();
  grpc::Status status = writer->Finish();
  if (!status.ok()) return FromGrpcStatus(status);
  if (response.complete() && response.sha256() != *sha256) {
    return absl::DataLossError(absl::StrCat("push ", file.path, ": the registry stored sha256 ", response.sha256(),
                                            " but the file hashes to ", *sha256));
  }
  return response;
}

// Are any of the file's first chunks (its first 2 MiB, cut by the Xet chunker) stored? A file
// that starts like stored content is hashed before it is sent (Note [Streamed push]).
absl::StatusOr<bool> StartIsStored(RegistryService::Stub& stub, const std::string& token, const LocalFile& file,
                                   const std::string& namespace_name, const std::string& name);

// Sets each file's sha256, hashing several files at once (one per core): a sharded checkpoint's
// hash pass, which must end before the registry can say which blobs it lacks, takes the time of
// its largest shards rather than of all of them. Each digest is remembered (Note [Remembered
// digests] in remembered_digest.h; the caller looks remembered ones up before). The first error in
// file order wins.
absl::Status HashFiles(std::vector<LocalFile>& files) {
  std::vector<absl::Status> statuses(files.size());
  std::atomic<size_t> next{0};
  auto drain = [&] {
    for (size_t index = next++; index < files.size(); index = next++) {
      std::optional<FileStamp> before = StampFile(files[index].full_path);
      absl::StatusOr<std::string> digest = Sha256OfFile(files[index].full_path);
      if (digest.ok()) {
        files[index].sha256 = *std::move(digest);
        if (before) RememberSha256(files[index].full_path, files[index].sha256, *before, false);
      } else {
        statuses[index] = digest.status();
      }
    }
  };
  const size_t workers = std::min<size_t>(files.size(), std::max(1u, std::thread::hardware_concurrency()));
  std::vector<std::thread> threads;
  for (size_t worker = 1; worker < workers; ++worker) threads.emplace_back(drain);
  drain();
  for (std::thread& thread : threads) thread.join();
  for (const absl::Status& status : statuses) {
    if (!status.ok()) return status;
  }
  return absl::OkStatus();
}

}  // namespace

namespace {

// Note [Chunked push]: a file of 1 MiB or more that is a new version of the file at its path in
// the parent commit (the registry then indexes the old blob's chunks), or whose first 2 MiB share a
// chunk with stored content, is cut with the Xet chunker (the chunks hf_xet makes); the registry
// names the chunks it lacks (FindMissingChunks), only those travel, packed
// into uncompressed xorbs of at most 3 MiB (one gRPC message each), and CreateBlobFromChunks
// assembles and sha256-checks the blob. Re-pushing a fine-tuned checkpoint thus sends about the
// changed tensors. A registry without these RPCs (UNIMPLEMENTED), or any failure, falls back to
// UploadBlob, which needs nothing but the bytes.
constexpr int64_t kChunkedPushMinimumBytes = 1 << 20;
constexpr size_t kChunkedPushXorbBytes = 3 << 20;
constexpr int64_t kChunkedPushProbeBytes = 2 << 20;
// Chunk hashes per FindMissingChunks request (34 bytes each on the wire): well inside gRPC's
// default 4 MiB message limit.
constexpr size_t kChunkHashesPerRequest = 60000;
// CreateBlobFromChunks names every chunk of the file in one message: 1.8 million hashes are 61 MB,
// inside this client's 64 MiB send limit and the registry's 256 MiB receive limit, so files up to
// about 110 GiB (64 KiB chunks on average) take the chunked path; a larger one is uploaded whole.
constexpr size_t kMaxChunksPerBlob = 1'800'000;

absl::StatusOr<bool> StartIsStored(RegistryService::Stub& stub, const std::string& token, const LocalFile& file,
                                   const std::string& namespace_name, const std::string& name) {
  int descriptor = open(file.full_path.c_str(), O_RDONLY | O_CLOEXEC);
  if (descriptor < 0) return ErrnoError("open", file.full_path);
  std::string prefix(static_cast<size_t>(std::min<int64_t>(file.size, kChunkedPushProbeBytes)), '\0');
  const int64_t filled = PreadFully(descriptor, prefix.data(), static_cast<int64_t>(prefix.size()), 0);
  close(descriptor);
  prefix.resize(static_cast<size_t>(filled));
  const auto* data = reinterpret_cast<const uint8_t*>(prefix.data());
  std::vector<uint64_t> ends = XetChunkBoundaries(data, prefix.size());
  if (static_cast<int64_t>(prefix.size()) < file.size && ends.size() > 1) ends.pop_back();  // cut by the prefix
  grpc::ClientContext context;
  Authorize(context, token);
  FindMissingChunksRequest request;
  request.set_namespace_(namespace_name);
  request.set_name(name);
  request.set_file_size(file.size);  // Note [Same-size candidates] in registry_service.cc
  for (size_t index = 0; index < ends.size(); ++index) {
    const uint64_t start = index == 0 ? 0 : ends[index - 1];
    const XetHash hash = XetChunkHash(data + start, ends[index] - start);
    request.add_chunk_hash(std::string(reinterpret_cast<const char*>(hash.data()), hash.size()));
  }
  FindMissingChunksResponse response;
  if (grpc::Status status = stub.FindMissingChunks(&context, request, &response); !status.ok()) {
    return FromGrpcStatus(status);
  }
  return response.missing_index_size() < request.chunk_hash_size();
}

// Sends the chunks of `file` the registry lacks and has it assemble the blob; returns bytes sent.
// `previous_sha256`: the blob at the same path in the parent commit ("" for a new path).
absl::StatusOr<int64_t> ChunkedUpload(RegistryService::Stub& stub, const std::string& token, const LocalFile& file,
                                      const std::string& namespace_name, const std::string& name,
                                      const std::string& previous_sha256) {
  int descriptor = open(file.full_path.c_str(), O_RDONLY | O_CLOEXEC);
  if (descriptor < 0) return absl::NotFoundError(absl::StrCat("push: open ", file.full_path, ": ", std::strerror(errno)));
  void* mapping = mmap(nullptr, static_cast<size_t>(file.size), PROT_READ, MAP_SHARED, descriptor, 0);
  close(descriptor);
  if (mapping == MAP_FAILED) return absl::InternalError(absl::StrCat("push: map ", file.full_path, ": ", std::strerror(errno)));
  struct Unmap {
    void* address;
    size_t length;
    ~Unmap() { munmap(address, length); }
  } unmap{mapping, static_cast<size_t>(file.size)};
  madvise(mapping, static_cast<size_t>(file.size), MADV_SEQUENTIAL);
  const auto* data = static_cast<const uint8_t*>(mapping);
  auto raw = [](const XetHash& hash) { return std::string(reinterpret_cast<const char*>(hash.data()), hash.size()); };
  // The probe, for a path new to the repository: are any of the first chunks stored? A new file
  // then takes UploadBlob, which writes each byte once on the server; only a file that shares its
  // start with stored content pays for chunking it all.
  if (previous_sha256.empty()) {
    const size_t prefix = static_cast<size_t>(std::min<int64_t>(file.size, kChunkedPushProbeBytes));
    std::vector<uint64_t> prefix_ends = XetChunkBoundaries(data, prefix);
    if (prefix < static_cast<size_t>(file.size) && prefix_ends.size() > 1) prefix_ends.pop_back();  // cut by the prefix
    grpc::ClientContext context;
    Authorize(context, token);
    FindMissingChunksRequest request;
    request.set_namespace_(namespace_name);
    request.set_name(name);
    request.set_file_size(file.size);  // Note [Same-size candidates] in registry_service.cc
    for (size_t index = 0; index < prefix_ends.size(); ++index) {
      const uint64_t start = index == 0 ? 0 : prefix_ends[index - 1];
      request.add_chunk_hash(raw(XetChunkHash(data + start, prefix_ends[index] - start)));
    }
    FindMissingChunksResponse response;
    if (grpc::Status status = stub.FindMissingChunks(&context, request, &response); !status.ok()) {
      return FromGrpcStatus(status);
    }
    if (response.missing_index_size() == request.chunk_hash_size()) {
      return absl::NotFoundError("push: no chunk of this file's start is stored; plain upload");
    }
  }
  const std::vector<uint64_t> ends = XetChunkBoundaries(data, static_cast<size_t>(file.size));
  if (ends.size() > kMaxChunksPerBlob) {
    return absl::UnimplementedError(absl::StrCat("push ", file.path, ": ", ends.size(),
                                                 " chunks are more than one CreateBlobFromChunks message holds (",
                                                 kMaxChunksPerBlob, ")"));
  }
  std::vector<XetHash> hashes;
  hashes.reserve(ends.size());
  for (size_t index = 0; index < ends.size(); ++index) {
    const uint64_t start = index == 0 ? 0 : ends[index - 1];
    hashes.push_back(XetChunkHash(data + start, ends[index] - start));
  }
  std::vector<size_t> missing;
  for (size_t first = 0; first < hashes.size(); first += kChunkHashesPerRequest) {
    grpc::ClientContext context;
    Authorize(context, token);
    FindMissingChunksRequest request;
    request.set_namespace_(namespace_name);
    request.set_name(name);
    if (first == 0 && !previous_sha256.empty()) request.add_based_on_sha256(previous_sha256);
    const size_t last = std::min(hashes.size(), first + kChunkHashesPerRequest);
    for (size_t index = first; index < last; ++index) request.add_chunk_hash(raw(hashes[index]));
    FindMissingChunksResponse response;
    if (grpc::Status status = stub.FindMissingChunks(&context, request, &response); !status.ok()) {
      return FromGrpcStatus(status);
    }
    for (uint32_t index : response.missing_index()) missing.push_back(first + index);
  }
  int64_t sent = 0;
  std::set<XetHash> packed;
  std::string xorb;
  std::vector<XetHashAndSize> leaves;
  auto flush = [&]() -> absl::Status {
    if (leaves.empty()) return absl::OkStatus();
    grpc::ClientContext context;
    Authorize(context, token);
    UploadXorbRequest request;
    request.set_namespace_(namespace_name);
    request.set_name(name);
    request.set_xorb_hash(raw(XetXorbHash(leaves)));
    request.set_data(std::move(xorb));
    UploadXorbResponse response;
    if (grpc::Status status = stub.UploadXorb(&context, request, &response); !status.ok()) return FromGrpcStatus(status);
    sent += static_cast<int64_t>(request.data().size());
    xorb.clear();
    leaves.clear();
    return absl::OkStatus();
  };
  for (size_t index : missing) {
    if (!packed.insert(hashes[index]).second) continue;  // a chunk repeated within the file goes once
    const uint64_t start = index == 0 ? 0 : ends[index - 1];
    const uint64_t size = ends[index] - start;
    if (!leaves.empty() && xorb.size() + 8 + size > kChunkedPushXorbBytes) {
      if (absl::Status status = flush(); !status.ok()) return status;
    }
    AppendUncompressedChunk(&xorb, absl::string_view(reinterpret_cast<const char*>(data + start), size));
    leaves.push_back({hashes[index], size});
  }
  if (absl::Status status = flush(); !status.ok()) return status;
  grpc::ClientContext context;
  Authorize(context, token);
  CreateBlobFromChunksRequest request;
  request.set_namespace_(namespace_name);
  request.set_name(name);
  request.set_sha256(file.sha256);
  request.set_size(file.size);
  for (const XetHash& hash : hashes) request.add_chunk_hash(raw(hash));
  CreateBlobFromChunksResponse response;
  if (grpc::Status status = stub.CreateBlobFromChunks(&context, request, &response); !status.ok()) {
    return FromGrpcStatus(status);
  }
  return sent;
}

}  // namespace

absl::StatusOr<PushResult> RegistryClient::PushFolder(const std::string& folder, const std::string& namespace_name,
                                                      const std::string& name, const PushOptions& options) {
  if (absl::Status status = ValidateRepositoryPart(namespace_name, "namespace"); !status.ok()) return status;
  if (absl::Status status = ValidateRepositoryPart(name, "name"); !status.ok()) return status;
  std::error_code error;
  if (!fs::is_directory(folder, error)) {
    return absl::InvalidArgumentError(absl::StrCat("push: ", folder, " is not a directory"));
  }
  std::vector<LocalFile> files;
  for (auto it = fs::recursive_directory_iterator(folder, error); it != fs::recursive_directory_iterator(); ++it) {
    if (it->is_directory() && it->path().filename() == ".git") {
      it.disable_recursion_pending();
      continue;
    }
    if (!it->is_regular_file()) continue;
    LocalFile file;
    file.path = fs::relative(it->path(), folder).generic_string();
    if (file.path.size() >= 11 && file.path.substr(file.path.size() - 11) == ".incomplete") continue;
    if (absl::Status status = ValidateRepositoryPath(file.path); !status.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("push ", folder, ": ", status.message()));
    }
    file.full_path = it->path().string();
    file.size = static_cast<int64_t>(it->file_size());
    files.push_back(std::move(file));
  }
  if (error) return absl::InternalError(absl::StrCat("push: list ", folder, ": ", error.message()));
  std::sort(files.begin(), files.end(), [](const LocalFile& a, const LocalFile& b) { return a.path < b.path; });

  auto stub = RegistryService::NewStub(channel_);
  if (options.create_repository) {
    grpc::ClientContext context;
    Authorize(context, token_);
    CreateRepositoryRequest request;
    request.set_namespace_(namespace_name);
    request.set_name(name);
    request.set_kind(static_cast<RepositoryKind>(options.kind));
    request.set_exist_ok(true);
    Repository repository;
    if (grpc::Status status = stub->CreateRepository(&context, request, &repository); !status.ok()) {
      return FromGrpcStatus(status);
    }
  }
  // The head this push builds on: the commit is refused (ABORTED) if the branch moves meanwhile.
  std::string expected_parent;
  {
    grpc::ClientContext context;
    Authorize(context, token_);
    ResolveRevisionRequest request;
    request.mutable_reference()->set_namespace_(namespace_name);
    request.mutable_reference()->set_name(name);
    request.mutable_reference()->set_revision(options.branch);
    ResolveRevisionResponse response;
    grpc::Status status = stub->ResolveRevision(&context, request, &response);
    if (status.ok()) {
      expected_parent = response.commit_id();
    } else if (status.error_code() != grpc::StatusCode::NOT_FOUND) {
      return FromGrpcStatus(status);
    }
  }

  // The parent's files: a changed file is probably a new version of the blob at its path.
  std::map<std::string, std::string> parent_sha256;
  if (!expected_parent.empty()) {
    grpc::ClientContext context;
    Authorize(context, token_);
    ListFilesRequest request;
    request.mutable_reference()->set_namespace_(namespace_name);
    request.mutable_reference()->set_name(name);
    request.mutable_reference()->set_revision(expected_parent);
    ListFilesResponse response;
    if (stub->ListFiles(&context, request, &response).ok()) {
      for (const FileEntry& entry : response.files()) parent_sha256[entry.path()] = entry.sha256();
    }
  }

  // Note [Streamed push]: which files are sent before their digest is known.
  std::map<int64_t, int> files_of_size;
  for (const LocalFile& file : files) ++files_of_size[file.size];
  std::vector<bool> streamed(files.size(), false);
  std::vector<std::optional<FileStamp>> stamps(files.size());  // of the streamed files, before they are read
  std::vector<LocalFile> to_hash;
  std::vector<size_t> to_hash_index;
  for (size_t index = 0; index < files.size(); ++index) {
    LocalFile& file = files[index];
    // A remembered digest is as good as a hash pass: the registry is asked for the blob first.
    if (std::optional<std::string> remembered = RememberedSha256(file.full_path)) {
      file.sha256 = *std::move(remembered);
      continue;
    }
    bool stream = file.size >= kStreamedPushMinimumBytes && !parent_sha256.count(file.path) &&
                  files_of_size[file.size] == 1;
    if (stream) {
      absl::StatusOr<bool> stored = StartIsStored(*stub, token_, file, namespace_name, name);
      // Anything but "none stored" (an older registry, an error the upload will report) hashes first.
      stream = stored.ok() && !*stored;
    }
    streamed[index] = stream;
    if (stream) stamps[index] = StampFile(file.full_path);
    if (!stream) {
      to_hash.push_back(file);
      to_hash_index.push_back(index);
    }
  }
  if (absl::Status hashed = HashFiles(to_hash); !hashed.ok()) return hashed;
  for (size_t index = 0; index < to_hash.size(); ++index) files[to_hash_index[index]].sha256 = to_hash[index].sha256;
  std::vector<std::string> upload_ids(files.size());
  for (size_t index = 0; index < files.size(); ++index) {
    if (streamed[index]) upload_ids[index] = StreamedUploadId(files[index]);
  }

  PushResult result;
  result.files = static_cast<int64_t>(files.size());
  FindMissingBlobsResponse missing;
  {
    grpc::ClientContext context;
    Authorize(context, token_);
    FindMissingBlobsRequest request;
    request.set_namespace_(namespace_name);
    request.set_name(name);
    for (size_t index = 0; index < files.size(); ++index) {
      if (streamed[index]) {
        request.add_upload_id(upload_ids[index]);
      } else {
        request.add_sha256(files[index].sha256);
      }
    }
    if (grpc::Status status = stub->FindMissingBlobs(&context, request, &missing); !status.ok()) {
      return FromGrpcStatus(status);
    }
  }
  std::map<std::string, int64_t> partial_offsets;  // by sha256, or by upload id for streamed files
  for (const PartialUpload& partial : missing.partial_uploads()) {
    partial_offsets[partial.upload_id().empty() ? partial.sha256() : partial.upload_id()] = partial.committed_size();
  }
  std::set<std::string> to_upload(missing.missing_sha256().begin(), missing.missing_sha256().end());
  TransferProgress progress;
  for (size_t index = 0; index < files.size(); ++index) {
    if (streamed[index] || to_upload.count(files[index].sha256)) progress.total_bytes += files[index].size;
  }
  auto count_sent = [&](int64_t bytes) {
    result.uploaded_bytes += bytes;
    progress.done_bytes += bytes;
    if (progress_) progress_(progress);
  };

  // UploadBlob with the digest first, from `offset`, resuming until complete.
  auto upload_hashed = [&](const LocalFile& file, int64_t offset) -> absl::Status {
    absl::Status last_error;
    for (int attempt = 0; attempt < kAttempts; ++attempt) {
      auto uploaded = UploadOnce(*stub, token_, file, namespace_name, name, offset, count_sent);
      if (uploaded.ok() && uploaded->complete()) return absl::OkStatus();
      if (uploaded.ok()) {
        offset = uploaded->committed_size();
        continue;
      }
      last_error = uploaded.status();
      if (!Retryable(last_error) && !absl::IsFailedPrecondition(last_error)) return last_error;
      // Ask where to resume: the registry keeps the bytes it received.
      grpc::ClientContext context;
      Authorize(context, token_);
      FindMissingBlobsRequest request;
      request.set_namespace_(namespace_name);
      request.set_name(name);
      request.add_sha256(file.sha256);
      FindMissingBlobsResponse again;
      if (!stub->FindMissingBlobs(&context, request, &again).ok()) continue;
      if (again.missing_sha256_size() == 0) return absl::OkStatus();
      offset = again.partial_uploads_size() > 0 ? again.partial_uploads(0).committed_size() : 0;
    }
    return absl::Status(last_error.ok() ? absl::StatusCode::kUnavailable : last_error.code(),
                        absl::StrCat("push ", file.path, ": upload did not complete after ", kAttempts,
                                     " attempts: ", last_error.message()));
  };

  // UploadBlob with the digest last (Note [Streamed push]); sets file.sha256. An older registry
  // refuses the first message (INVALID_ARGUMENT: no sha256): the file is hashed and sent as before.
  auto upload_streamed = [&](LocalFile& file, const std::string& upload_id, int64_t offset) -> absl::Status {
    absl::Status last_error;
    for (int attempt = 0; attempt < kAttempts; ++attempt) {
      std::string digest;
      auto uploaded = UploadStreamedOnce(*stub, token_, file, namespace_name, name, upload_id, offset, count_sent, &digest);
      if (uploaded.ok() && uploaded->complete()) {
        file.sha256 = uploaded->sha256();
        return absl::OkStatus();
      }
      if (uploaded.ok()) {
        offset = uploaded->committed_size();
        continue;
      }
      last_error = uploaded.status();
      if (attempt == 0 && offset == 0 &&
          (absl::IsInvalidArgument(last_error) || absl::IsUnimplemented(last_error))) {
        absl::StatusOr<std::string> sha256 = Sha256OfFile(file.full_path);
        if (!sha256.ok()) return sha256.status();
        file.sha256 = *sha256;
        return upload_hashed(file, 0);
      }
      if (absl::IsDataLoss(last_error)) {
        // The bytes the registry held did not hash to the file's digest (the file changed between
        // attempts): it dropped them; send everything again.
        offset = 0;
        continue;
      }
      if (!Retryable(last_error) && !absl::IsFailedPrecondition(last_error)) return last_error;
      grpc::ClientContext context;
      Authorize(context, token_);
      FindMissingBlobsRequest request;
      request.set_namespace_(namespace_name);
      request.set_name(name);
      request.add_upload_id(upload_id);
      FindMissingBlobsResponse again;
      if (!stub->FindMissingBlobs(&context, request, &again).ok()) continue;
      offset = again.partial_uploads_size() > 0 ? again.partial_uploads(0).committed_size() : 0;
    }
    return absl::Status(last_error.ok() ? absl::StatusCode::kUnavailable : last_error.code(),
                        absl::StrCat("push ", file.path, ": upload did not complete after ", kAttempts,
                                     " attempts: ", last_error.message()));
  };

  for (size_t index = 0; index < files.size(); ++index) {
    LocalFile& file = files[index];
    progress.path = file.path;
    if (streamed[index]) {
      auto partial = partial_offsets.find(upload_ids[index]);
      int64_t offset = partial == partial_offsets.end() ? 0 : partial->second;
      if (offset > file.size) offset = 0;
      progress.done_bytes += offset;
      result.skipped_bytes += offset;
      if (absl::Status status = upload_streamed(file, upload_ids[index], offset); !status.ok()) return status;
      if (stamps[index]) RememberSha256(file.full_path, file.sha256, *stamps[index], false);
      continue;
    }
    if (!to_upload.count(file.sha256)) {
      result.skipped_bytes += file.size;
      continue;
    }
    to_upload.erase(file.sha256);  // two paths with the same bytes upload once
    int64_t offset = partial_offsets.count(file.sha256) ? partial_offsets[file.sha256] : 0;
    if (offset > file.size) offset = 0;
    if (offset == 0 && file.size >= kChunkedPushMinimumBytes) {
      auto previous = parent_sha256.find(file.path);
      absl::StatusOr<int64_t> sent = ChunkedUpload(*stub, token_, file, namespace_name, name,
                                                   previous == parent_sha256.end() ? "" : previous->second);
      if (sent.ok()) {
        result.uploaded_bytes += *sent;
        result.skipped_bytes += file.size - std::min(*sent, file.size);
        progress.done_bytes += file.size;
        if (progress_) progress_(progress);
        continue;
      }
      if (absl::IsUnauthenticated(sent.status()) || absl::IsPermissionDenied(sent.status())) return sent.status();
      // Anything else (an older registry, a lost connection): the plain upload below.
    }
    progress.done_bytes += offset;
    result.skipped_bytes += offset;
    if (absl::Status status = upload_hashed(file, offset); !status.ok()) return status;
  }

  grpc::ClientContext context;
  Authorize(context, token_);
  CreateCommitRequest request;
  request.set_namespace_(namespace_name);
  request.set_name(name);
  request.set_branch(options.branch);
  request.set_expected_parent(expected_parent);
  request.set_message(options.message);
  for (const LocalFile& file : files) {
    FileEntry* entry = request.add_files();
    entry->set_path(file.path);
    entry->set_size(file.size);
    entry->set_sha256(file.sha256);
  }
  Commit commit;
  if (grpc::Status status = stub->CreateCommit(&context, request, &commit); !status.ok()) return FromGrpcStatus(status);
  result.commit_id = commit.commit_id();
  return result;
}

namespace {

// Note [Raw download]: DownloadFile's responses are read as raw ByteBuffers, not parsed into a
// DownloadFileResponse: parsing would copy every MiB out of gRPC's receive slices into a fresh
// std::string (a memcpy and, for each new buffer, page faults). Instead the wire format is walked
// across the slices (they are reference counted, not copied), the data field's pieces are written
// with pwritev straight from them, and the slices travel to the hashing thread. This is the
// method the generated stub would call, with ByteBuffer as the response type.
constexpr char kDownloadFileMethod[] = "/flotilla.v1.RegistryService/DownloadFile";

// Reads protobuf wire format across a message's slices without joining them.
class SliceCursor {
 public:
  explicit SliceCursor(const std::vector<grpc::Slice>& slices) : slices_(slices) {}

  bool AtEnd() {
    SkipEmpty();
    return index_ == slices_.size();
  }

  bool ReadVarint(uint64_t* value) {
    *value = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      SkipEmpty();
      if (index_ == slices_.size()) return false;
      const uint8_t byte = slices_[index_].begin()[position_++];
      *value |= static_cast<uint64_t>(byte & 0x7f) << shift;
      if ((byte & 0x80) == 0) return true;
    }
    return false;
  }

  // Moves over `length` bytes, appending where they lie to `spans` when it is not null.
  bool Take(uint64_t length, std::vector<iovec>* spans) {
    while (length > 0) {
      SkipEmpty();
      if (index_ == slices_.size()) return false;
      const size_t piece = static_cast<size_t>(std::min<uint64_t>(slices_[index_].size() - position_, length));
      if (spans != nullptr) {
        spans->push_back({const_cast<uint8_t*>(slices_[index_].begin() + position_), piece});
      }
      position_ += piece;
      length -= piece;
    }
    return true;
  }

 private:
  void SkipEmpty() {
    while (index_ < slices_.size() && position_ == slices_[index_].size()) {
      ++index_;
      position_ = 0;
    }
  }

  const std::vector<grpc::Slice>& slices_;
  size_t index_ = 0;
  size_t position_ = 0;
};

// Where the data field (3) of one serialized DownloadFileResponse lies in `slices`; the other
// fields (the first message's entry and commit id) are skipped: the caller has them from ListFiles.
absl::StatusOr<std::vector<iovec>> DataSpans(const std::vector<grpc::Slice>& slices, const std::string& path) {
  std::vector<iovec> spans;
  SliceCursor cursor(slices);
  bool seen_data = false;
  auto malformed = [&](absl::string_view what) {
    return absl::InternalError(absl::StrCat("pull ", path, ": a DownloadFile message is malformed: ", what));
  };
  while (!cursor.AtEnd()) {
    uint64_t tag = 0;
    if (!cursor.ReadVarint(&tag)) return malformed("truncated tag");
    const uint64_t field = tag >> 3;
    uint64_t length = 0;
    switch (tag & 7) {
      case 0:
        if (!cursor.ReadVarint(&length)) return malformed("truncated varint");
        break;
      case 1:
        if (!cursor.Take(8, nullptr)) return malformed("truncated fixed64");
        break;
      case 5:
        if (!cursor.Take(4, nullptr)) return malformed("truncated fixed32");
        break;
      case 2:
        if (!cursor.ReadVarint(&length)) return malformed("truncated length");
        // A repeated data field would replace the first (proto3 bytes); the registry never sends one.
        if (field == 3 && seen_data) return malformed("two data fields");
        if (!cursor.Take(length, field == 3 ? &spans : nullptr)) {
          return malformed(absl::StrCat("field ", field, " announces ", length, " bytes past the message's end"));
        }
        seen_data = seen_data || field == 3;
        break;
      default:
        return malformed(absl::StrCat("wire type ", tag & 7));
    }
  }
  return spans;
}

// Writes all of `spans` at `offset`, continuing after short writes.
absl::Status WriteSpans(int descriptor, std::vector<iovec> spans, int64_t offset, const std::string& path) {
  size_t first = 0;
  while (first < spans.size()) {
    const int count = static_cast<int>(std::min<size_t>(spans.size() - first, IOV_MAX));
    ssize_t written = pwritev(descriptor, spans.data() + first, count, offset);
    if (written < 0 && errno == EINTR) continue;
    if (written < 0) return ErrnoError("write", path);
    offset += written;
    for (size_t left = static_cast<size_t>(written); left > 0 && first < spans.size();) {
      const size_t used = std::min(left, spans[first].iov_len);
      spans[first].iov_base = static_cast<char*>(spans[first].iov_base) + used;
      spans[first].iov_len -= used;
      left -= used;
      if (spans[first].iov_len == 0) ++first;
    }
    while (first < spans.size() && spans[first].iov_len == 0) ++first;
  }
  return absl::OkStatus();
}

// Note [Direct pull writes]: a large download's bytes are gathered in an aligned 8 MiB buffer and
// written with O_DIRECT, as the registry writes uploads (Note [Direct upload writes] in
// blob_store.cc): a 1 GiB pull spent 1.47 s of its 2.0 s of client CPU in the kernel, most of it
// copying pwritev's data into freshly allocated page cache, whose cost swings with the machine's
// memory pressure; a copy into the buffer (from slices still in the CPU's cache) and a DMA cost
// less. The tail, and any download where O_DIRECT is refused (tmpfs, an unaligned resume offset),
// is written through the page cache. Flush before the partial file is read, resumed or renamed.
class PartialFileWriter {
 public:
  PartialFileWriter(int descriptor, std::string path, int64_t offset, int64_t size)
      : descriptor_(descriptor), path_(std::move(path)), offset_(offset),
        direct_(path_, offset, size - offset, /*buffer_count=*/1) {}
  ~PartialFileWriter() { Flush().IgnoreError(); }

  // Appends the bytes of `spans` after those written so far.
  absl::Status Write(const std::vector<iovec>& spans, int64_t length) {
    if (!direct_.active()) {
      if (absl::Status status = WriteSpans(descriptor_, spans, offset_, path_); !status.ok()) return status;
      offset_ += length;
      return absl::OkStatus();
    }
    for (size_t index = 0; index < spans.size(); ++index) {
      const char* data = static_cast<const char*>(spans[index].iov_base);
      size_t left = spans[index].iov_len;
      while (left > 0) {
        const size_t taken = std::min(left, static_cast<size_t>(DirectWriter::kBufferBytes - gathered_));
        std::memcpy(direct_.buffer(0) + gathered_, data, taken);
        gathered_ += static_cast<int64_t>(taken);
        data += taken;
        left -= taken;
        length -= static_cast<int64_t>(taken);
        if (gathered_ < DirectWriter::kBufferBytes) continue;
        if (absl::Status status = WriteGathered(); !status.ok()) return status;
        if (!direct_.active()) {  // refused: what is left goes through the page cache
          std::vector<iovec> rest = {{const_cast<char*>(data), left}};
          rest.insert(rest.end(), spans.begin() + static_cast<std::ptrdiff_t>(index) + 1, spans.end());
          return Write(rest, length);
        }
      }
    }
    return absl::OkStatus();
  }

  // Writes what is gathered (the unaligned rest through the page cache); later writes are buffered.
  absl::Status Flush() {
    if (!direct_.active()) return absl::OkStatus();
    absl::Status status = WriteGathered();
    direct_.Deactivate();
    return status;
  }

 private:
  absl::Status WriteGathered() {
    if (absl::Status status = direct_.Write(descriptor_, direct_.buffer(0), gathered_, offset_); !status.ok()) {
      return status;
    }
    offset_ += gathered_;
    gathered_ = 0;
    return absl::OkStatus();
  }

  const int descriptor_;
  const std::string path_;
  int64_t offset_;  // bytes in the file
  DirectWriter direct_;
  int64_t gathered_ = 0;  // bytes [offset_, offset_ + gathered_) of the file, in the buffer while direct
};

// One DownloadFile message's data: the received slices (reference counted, not copied) and where
// the data field lies in them.
struct DownloadPiece {
  std::vector<grpc::Slice> slices;  // keeps the bytes `spans` point into alive
  std::vector<iovec> spans;
  int64_t bytes = 0;
};

// Hashes a download's bytes on a second thread, in order, while the calling thread receives and
// writes the next messages: receiving + pwrite on one core and sha256 on the other take about the
// same time per MiB, so neither waits for the other long. The received slices (reference counted)
// are handed over, not copied. Bounded by kQueueBytes: a slow hasher makes the receiver wait, and
// gRPC's flow control the sender. Not thread-safe: one thread calls Push and Finish.
class HashPipeline {
 public:
  explicit HashPipeline(Sha256& hasher) : hasher_(hasher), thread_([this] { Run(); }) {}
  ~HashPipeline() { Finish(); }

  void Push(DownloadPiece piece) {
    std::unique_lock lock(mutex_);
    space_.wait(lock, [&] { return queued_bytes_ < kQueueBytes; });
    queued_bytes_ += piece.bytes;
    queue_.push_back(std::move(piece));
    work_.notify_one();
  }

  // Waits until every byte pushed is hashed. Idempotent.
  void Finish() {
    {
      std::lock_guard lock(mutex_);
      closed_ = true;
      work_.notify_one();
    }
    if (thread_.joinable()) thread_.join();
  }

 private:
  static constexpr int64_t kQueueBytes = 16 << 20;

  void Run() {
    std::unique_lock lock(mutex_);
    while (true) {
      work_.wait(lock, [&] { return !queue_.empty() || closed_; });
      if (queue_.empty()) return;
      DownloadPiece piece = std::move(queue_.front());
      queue_.pop_front();
      lock.unlock();
      for (const iovec& span : piece.spans) {
        hasher_.Update(absl::string_view(static_cast<const char*>(span.iov_base), span.iov_len));
      }
      piece.slices.clear();
      lock.lock();
      queued_bytes_ -= piece.bytes;
      space_.notify_one();
    }
  }

  Sha256& hasher_;
  std::mutex mutex_;
  std::condition_variable work_;   // a piece was queued, or Finish was called
  std::condition_variable space_;  // a piece was hashed
  std::deque<DownloadPiece> queue_;  // guarded by mutex_
  int64_t queued_bytes_ = 0;       // guarded by mutex_
  bool closed_ = false;            // guarded by mutex_
  std::thread thread_;             // last: starts after the members it uses
};

// What ended a download stream: `local`, this side refused what arrived or was told to stop (not
// retried), or `stream`, the RPC failed or ended early (retried from the bytes that arrived).
struct StreamEnd {
  absl::Status local;
  absl::Status stream;
};

// Reads DownloadFile for [offset, offset + length) of `entry` (length 0: to the end) and hands each
// message's data, in order, to `deliver`. A registry older than Note [Ranged pull] ignores
// `length` and sends on: what lies past the range is dropped and the call cancelled. `stopped` is
// asked after each message (another stream failed).
StreamEnd ReceiveStream(grpc::ChannelInterface& channel, const std::string& token, const ModelReference& pinned,
                        const FileEntry& entry, int64_t offset, int64_t length,
                        const std::function<absl::Status(DownloadPiece)>& deliver,
                        const std::function<bool()>& stopped) {
  const grpc::internal::RpcMethod method(kDownloadFileMethod, grpc::internal::RpcMethod::SERVER_STREAMING);
  grpc::ClientContext context;
  Authorize(context, token);
  DownloadFileRequest request;
  *request.mutable_reference() = pinned;
  request.set_path(entry.path());
  request.set_offset(offset);
  request.set_length(length);
  const int64_t end = length == 0 ? entry.size() : offset + length;
  std::unique_ptr<grpc::ClientReader<grpc::ByteBuffer>> reader(
      grpc::internal::ClientReaderFactory<grpc::ByteBuffer>::Create(&channel, method, &context, request));
  grpc::ByteBuffer message;
  StreamEnd result;
  bool range_complete = false;  // a registry that ignores `length` sent past it
  while (!range_complete && reader->Read(&message)) {
    DownloadPiece piece;
    if (!message.Dump(&piece.slices).ok()) {
      result.local = absl::InternalError(absl::StrCat("pull ", entry.path(), ": unreadable DownloadFile message"));
      break;
    }
    message.Clear();
    absl::StatusOr<std::vector<iovec>> spans = DataSpans(piece.slices, entry.path());
    if (!spans.ok()) {
      result.local = spans.status();
      break;
    }
    piece.spans = *std::move(spans);
    for (const iovec& span : piece.spans) piece.bytes += static_cast<int64_t>(span.iov_len);
    if (piece.bytes == 0) continue;
    if (offset + piece.bytes > end) {
      if (length == 0) {
        result.local = absl::DataLossError(absl::StrCat("pull ", entry.path(), ": the registry sent more than the ",
                                                        entry.size(), " bytes it lists"));
        break;
      }
      int64_t keep = end - offset;
      std::vector<iovec> kept;
      for (const iovec& span : piece.spans) {
        if (keep == 0) break;
        kept.push_back({span.iov_base, static_cast<size_t>(std::min<int64_t>(keep, span.iov_len))});
        keep -= static_cast<int64_t>(kept.back().iov_len);
      }
      piece.spans = std::move(kept);
      piece.bytes = end - offset;
      range_complete = true;
    }
    offset += piece.bytes;
    if (result.local = deliver(std::move(piece)); !result.local.ok()) break;
    if (stopped()) {
      result.local = absl::CancelledError(absl::StrCat("pull ", entry.path(), ": stopped (another stream failed)"));
      break;
    }
  }
  if (!result.local.ok() || range_complete) {
    context.TryCancel();
    reader->Finish();
    return result;
  }
  if (grpc::Status finished = reader->Finish(); !finished.ok()) {
    result.stream = FromGrpcStatus(finished);
  } else if (offset != end) {
    result.stream = absl::UnavailableError(absl::StrCat("pull ", entry.path(), ": the stream ended at byte ", offset,
                                                        " of ", end));
  }
  return result;
}

// Note [Ranged pull]: a single large file downloads over kRangedPullStreams streams at once, each
// fetching the next 16 MiB range (DownloadFileRequest.length), while the calling thread writes the
// ranges in file order and a third thread sha256es them in that order. One stream was bound by
// round trips, not by a core: on two cores, a 1 GiB pull used 1.2-1.35 s of CPU in 1.0-1.2 s of
// wall time (perf: the hasher 63% busy, the receiver 22%, the registry's sender 47%; 2026-12-07),
// each turn of the HTTP/2 flow-control window waiting for the other process to be scheduled; a
// second stream fills those waits (same runs: 1.03-1.21 s against 1.19-1.44 s for one stream;
// three or four streams, or 4, 8 or 32 MiB ranges, were no faster). Only for a large file pulled
// alone: the four files of a sharded checkpoint, each over two streams, pulled at 0.85x of one
// stream each (registry_transfer.py, 2026-12-07). The file is still written in
// order, so a killed pull leaves a partial file without holes for the next pull to resume (Note
// [Atomic pull]). Streams run at most kRangesAhead ranges past the one being written, which bounds
// the received slices held to about kRangesAhead x 16 MiB.
constexpr int64_t kRangedPullMinimumBytes = 64 << 20;
constexpr int64_t kPullRangeBytes = 16 << 20;
constexpr size_t kRangedPullStreams = 2;
constexpr size_t kRangesAhead = 3;

// The ranges of one download: receivers Claim the next range and Put its pieces; the writer Takes
// them in file order. Thread-safe.
class RangeReorder {
 public:
  RangeReorder(int64_t begin, int64_t end) {
    for (int64_t start = begin; start < end; start += kPullRangeBytes) {
      ranges_.push_back({start, std::min(kPullRangeBytes, end - start)});
    }
  }

  struct Claimed {
    size_t index;
    int64_t start;
    int64_t length;
  };
  // The next unclaimed range, once it is fewer than kRangesAhead past the one being written; nullopt
  // when every range is claimed or the download stopped.
  std::optional<Claimed> Claim() {
    std::unique_lock lock(mutex_);
    changed_.wait(lock, [&] { return stopped_ || next_claim_ >= ranges_.size() || next_claim_ < head_ + kRangesAhead; });
    if (stopped_ || next_claim_ >= ranges_.size()) return std::nullopt;
    const size_t index = next_claim_++;
    return Claimed{index, ranges_[index].start, ranges_[index].length};
  }

  void Put(size_t index, DownloadPiece piece) {
    std::lock_guard lock(mutex_);
    ranges_[index].pieces.push_back(std::move(piece));
    changed_.notify_all();
  }

  void Done(size_t index, StreamEnd end) {
    std::lock_guard lock(mutex_);
    ranges_[index].done = true;
    ranges_[index].end = std::move(end);
    changed_.notify_all();
  }

  // The next piece in file order; nullopt once every range was taken whole. A range whose stream
  // failed ends the download, once the pieces of it that did arrive are taken: then `failure` is
  // set to how its stream ended and the result is an error.
  absl::StatusOr<std::optional<DownloadPiece>> Take(StreamEnd* failure) {
    std::unique_lock lock(mutex_);
    while (head_ < ranges_.size()) {
      Range& range = ranges_[head_];
      changed_.wait(lock, [&] { return !range.pieces.empty() || range.done; });
      if (!range.pieces.empty()) {
        DownloadPiece piece = std::move(range.pieces.front());
        range.pieces.pop_front();
        return std::optional<DownloadPiece>(std::move(piece));
      }
      if (!range.end.local.ok() || !range.end.stream.ok()) {
        *failure = range.end;
        return absl::AbortedError("a range's stream failed");
      }
      ++head_;
      changed_.notify_all();
    }
    return std::optional<DownloadPiece>();
  }

  void Stop() {
    std::lock_guard lock(mutex_);
    stopped_ = true;
    changed_.notify_all();
  }
  bool stopped() {
    std::lock_guard lock(mutex_);
    return stopped_;
  }

 private:
  struct Range {
    int64_t start = 0;
    int64_t length = 0;
    std::deque<DownloadPiece> pieces;
    bool done = false;
    StreamEnd end;
  };
  std::mutex mutex_;
  std::condition_variable changed_;
  std::vector<Range> ranges_;  // guarded by mutex_ (how many, and their bounds, are fixed)
  size_t next_claim_ = 0;      // guarded by mutex_
  size_t head_ = 0;            // the range being taken; guarded by mutex_
  bool stopped_ = false;       // guarded by mutex_
};

// [offset, entry.size()) over kRangedPullStreams streams (Note [Ranged pull]), each piece handed to
// `deliver` in file order on the calling thread.
StreamEnd ReceiveRanges(grpc::ChannelInterface& channel, const std::string& token, const ModelReference& pinned,
                        const FileEntry& entry, int64_t offset,
                        const std::function<absl::Status(DownloadPiece)>& deliver) {
  RangeReorder reorder(offset, entry.size());
  std::vector<std::thread> receivers;
  for (size_t stream = 0; stream < kRangedPullStreams; ++stream) {
    receivers.emplace_back([&] {
      while (std::optional<RangeReorder::Claimed> range = reorder.Claim()) {
        StreamEnd end = ReceiveStream(
            channel, token, pinned, entry, range->start, range->length,
            [&](DownloadPiece piece) {
              reorder.Put(range->index, std::move(piece));
              return absl::OkStatus();
            },
            [&] { return reorder.stopped(); });
        reorder.Done(range->index, std::move(end));
      }
    });
  }
  StreamEnd result;
  while (true) {
    absl::StatusOr<std::optional<DownloadPiece>> piece = reorder.Take(&result);
    if (!piece.ok() || !piece->has_value()) break;
    if (result.local = deliver(**std::move(piece)); !result.local.ok()) break;
  }
  reorder.Stop();
  for (std::thread& receiver : receivers) receiver.join();
  return result;
}

// Downloads one file into `final_path` via `final_path`.incomplete, resuming and verifying.
// `received(bytes)` is called after each message is written; `stop` set by another worker's
// failure ends the download early (the partial file stays, for the next pull to resume).
// Note [Atomic pull]: the final path appears only by rename after the sha256 of every byte matched,
// so a reader never sees a half-written file; a killed pull leaves <file>.incomplete, whose bytes
// the next pull re-hashes and continues. The partial file is locked (flock) while written, so two
// processes pulling the same file into the same cache wait for each other instead of interleaving.
absl::Status DownloadOne(grpc::ChannelInterface& channel, const std::string& token, const ModelReference& pinned,
                         const FileEntry& entry, const std::string& final_path, bool ranged,
                         const std::function<void(int64_t)>& received, const std::atomic<bool>& stop) {
  const std::string partial = final_path + ".incomplete";
  std::error_code error;
  fs::create_directories(fs::path(final_path).parent_path(), error);
  absl::Status last_error;
  for (int attempt = 0; attempt < kAttempts; ++attempt) {
    int descriptor = open(partial.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (descriptor < 0) return ErrnoError("open", partial);
    while (flock(descriptor, LOCK_EX) != 0 && errno == EINTR) {
    }
    // Another process may have completed the file while this one waited for the lock.
    struct stat status;
    struct stat final_status;
    if (stat(final_path.c_str(), &final_status) == 0 && final_status.st_size == entry.size()) {
      if (fstat(descriptor, &status) == 0 && status.st_ino != final_status.st_ino) unlink(partial.c_str());
      close(descriptor);
      return absl::OkStatus();
    }
    fstat(descriptor, &status);
    int64_t offset = status.st_size;
    if (offset > entry.size()) {
      if (ftruncate(descriptor, 0) != 0) {
        close(descriptor);
        return ErrnoError("truncate", partial);
      }
      offset = 0;
    }
    Sha256 hasher;
    {
      std::string buffer(kChunkBytes, '\0');
      for (int64_t at = 0; at < offset;) {
        ssize_t got = pread(descriptor, buffer.data(), std::min<int64_t>(kChunkBytes, offset - at), at);
        if (got <= 0) break;
        hasher.Update(absl::string_view(buffer.data(), got));
        at += got;
      }
    }
    posix_fadvise(descriptor, offset, 0, POSIX_FADV_SEQUENTIAL);
    StreamEnd ended;
    {
      PartialFileWriter writer(descriptor, partial, offset, entry.size());
      HashPipeline pipeline(hasher);
      auto write_and_hash = [&](DownloadPiece piece) -> absl::Status {
        if (absl::Status status = writer.Write(piece.spans, piece.bytes); !status.ok()) return status;
        const int64_t bytes = piece.bytes;
        offset += bytes;
        pipeline.Push(std::move(piece));
        received(bytes);
        if (stop.load(std::memory_order_relaxed)) {
          return absl::CancelledError(absl::StrCat("pull ", entry.path(), ": stopped (another file failed)"));
        }
        return absl::OkStatus();
      };
      if (ranged && entry.size() - offset >= kRangedPullMinimumBytes) {
        ended = ReceiveRanges(channel, token, pinned, entry, offset, write_and_hash);
      } else {
        ended = ReceiveStream(channel, token, pinned, entry, offset, 0, write_and_hash, [] { return false; });
      }
      pipeline.Finish();
      // Every byte received is in the file before it is resumed from, hashed again or renamed.
      if (absl::Status flushed = writer.Flush(); !flushed.ok() && ended.local.ok()) ended.local = flushed;
    }
    if (!ended.local.ok()) {
      close(descriptor);
      if (absl::IsDataLoss(ended.local)) unlink(partial.c_str());
      return ended.local;
    }
    // The lock is held until the rename: a process waiting for it then finds the file complete.
    struct CloseAtEnd {
      int descriptor;
      ~CloseAtEnd() { close(descriptor); }
    } close_at_end{descriptor};
    if (!ended.stream.ok()) {
      last_error = ended.stream;
      if (!Retryable(last_error) || stop.load()) return last_error;
      continue;  // resume from what arrived
    }
    if (offset != entry.size()) {
      last_error = absl::DataLossError(absl::StrCat("pull ", entry.path(), ": got ", offset, " of ", entry.size(), " bytes"));
      continue;
    }
    std::string actual = hasher.HexDigest();
    if (actual != entry.sha256()) {
      unlink(partial.c_str());
      return absl::DataLossError(absl::StrCat("pull ", entry.path(), ": sha256 of the received bytes is ", actual,
                                              " but the registry lists ", entry.sha256(), "; the partial file was removed"));
    }
    if (rename(partial.c_str(), final_path.c_str()) != 0) return ErrnoError("rename", final_path);
    // Every byte was written by this pull and hashed: a push of the file need not read it again.
    if (std::optional<FileStamp> written = StampFile(final_path)) {
      RememberSha256(final_path, entry.sha256(), *written, /*written_by_this_process=*/true);
    }
    return absl::OkStatus();
  }
  return absl::Status(last_error.code(), absl::StrCat("pull ", entry.path(), ": gave up after ", kAttempts,
                                                      " attempts: ", last_error.message()));
}

}  // namespace

absl::StatusOr<PullResult> RegistryClient::PullToDirectory(const std::string& reference_text,
                                                           const std::string& directory, const PathFilter& include) {
  auto reference = ParseReference(reference_text);
  if (!reference.ok()) return reference.status();
  auto stub = RegistryService::NewStub(channel_);
  ListFilesRequest request;
  request.mutable_reference()->set_namespace_(reference->namespace_name);
  request.mutable_reference()->set_name(reference->name);
  request.mutable_reference()->set_revision(reference->revision);
  ListFilesResponse listing;
  {
    grpc::ClientContext context;
    Authorize(context, token_);
    if (grpc::Status status = stub->ListFiles(&context, request, &listing); !status.ok()) return FromGrpcStatus(status);
  }
  if (include) {
    auto* files = listing.mutable_files();
    files->erase(std::remove_if(files->begin(), files->end(), [&](const FileEntry& entry) { return !include(entry.path()); }),
                 files->end());
  }
  PullResult result;
  result.commit_id = listing.commit_id();
  result.directory = directory;
  result.files = listing.files_size();
  // Every file comes from the resolved commit, even if the branch moves during the pull.
  ModelReference pinned = request.reference();
  pinned.set_revision(listing.commit_id());
  TransferProgress progress;
  for (const FileEntry& entry : listing.files()) progress.total_bytes += entry.size();
  std::vector<const FileEntry*> to_fetch;
  for (const FileEntry& entry : listing.files()) {
    if (absl::Status status = ValidateRepositoryPath(entry.path()); !status.ok()) {
      return absl::DataLossError(absl::StrCat("pull: the registry listed an unsafe path: ", status.message()));
    }
    const std::string final_path = (fs::path(directory) / entry.path()).string();
    std::error_code error;
    if (fs::is_regular_file(final_path, error) && static_cast<int64_t>(fs::file_size(final_path, error)) == entry.size()) {
      result.cached_bytes += entry.size();
      progress.done_bytes += entry.size();
      continue;
    }
    to_fetch.push_back(&entry);
  }
  // Note [Parallel pull]: the files of a sharded checkpoint download at once, up to
  // max_parallel_files_ streams on the one channel (HTTP/2 multiplexes them), largest first so
  // the last to finish is a small one. Each stream receives and writes on its worker thread and
  // hashes on a second one, so the workers spread the copies and sha256 over the cores. The
  // first failure stops the others (their partial files stay, resumable) and is the one returned.
  std::stable_sort(to_fetch.begin(), to_fetch.end(),
                   [](const FileEntry* left, const FileEntry* right) { return left->size() > right->size(); });
  const size_t workers = std::min<size_t>(to_fetch.size(), static_cast<size_t>(std::max(1, max_parallel_files_)));
  // Ranges only for a large file pulled alone: the files of a sharded checkpoint already keep
  // several streams busy (Note [Ranged pull]).
  const bool ranged = workers == 1 || std::count_if(to_fetch.begin(), to_fetch.end(), [](const FileEntry* entry) {
                                        return entry->size() >= kRangedPullMinimumBytes;
                                      }) == 1;
  std::mutex progress_mutex;
  std::atomic<bool> stop{false};
  std::atomic<size_t> next{0};
  absl::Status first_error;  // guarded by progress_mutex
  auto drain = [&] {
    for (size_t index = next++; index < to_fetch.size() && !stop.load(); index = next++) {
      const FileEntry& entry = *to_fetch[index];
      const std::string final_path = (fs::path(directory) / entry.path()).string();
      absl::Status status = DownloadOne(
          *channel_, token_, pinned, entry, final_path, ranged,
          [&](int64_t bytes) {
            std::lock_guard lock(progress_mutex);
            result.downloaded_bytes += bytes;
            progress.done_bytes += bytes;
            progress.path = entry.path();
            if (progress_) progress_(progress);
          },
          stop);
      if (!status.ok()) {
        std::lock_guard lock(progress_mutex);
        if (!stop.exchange(true)) first_error = status;
        return;
      }
    }
  };
  std::vector<std::thread> threads;
  for (size_t worker = 1; worker < workers; ++worker) threads.emplace_back(drain);
  drain();
  for (std::thread& thread : threads) thread.join();
  if (!first_error.ok()) return first_error;
  std::error_code error;
  fs::create_directories(directory, error);
  return result;
}

absl::StatusOr<std::string> RegistryClient::PullToCache(const std::string& reference_text, const std::string& cache_root,
                                                        const PathFilter& include) {
  auto reference = ParseReference(reference_text);
  if (!reference.ok()) return reference.status();
  // Resolve first, so the directory is named by the commit id.
  auto stub = RegistryService::NewStub(channel_);
  ResolveRevisionRequest request;
  request.mutable_reference()->set_namespace_(reference->namespace_name);
  request.mutable_reference()->set_name(reference->name);
  request.mutable_reference()->set_revision(reference->revision);
  ResolveRevisionResponse response;
  grpc::ClientContext context;
  Authorize(context, token_);
  if (grpc::Status status = stub->ResolveRevision(&context, request, &response); !status.ok()) {
    return FromGrpcStatus(status);
  }
  const std::string directory =
      (fs::path(cache_root) / reference->namespace_name / reference->name / response.commit_id()).string();
  auto pulled = PullToDirectory(absl::StrCat(reference->namespace_name, "/", reference->name, "@", response.commit_id()),
                                directory, include);
  if (!pulled.ok()) return pulled.status();
  return directory;
}

}  // namespace flotilla::registry
