#include "services/registry/blob_store.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <condition_variable>
#include <thread>
#include <cstdlib>
#include <algorithm>
#include <cstring>
#include <filesystem>
#include <system_error>

#include <absl/strings/str_cat.h>
#include <openssl/evp.h>

#include "services/registry/direct_writes.h"
#include "services/registry/names.h"

namespace flotilla::registry {
namespace fs = std::filesystem;

Sha256::Sha256() : context_(EVP_MD_CTX_new()) {
  EVP_DigestInit_ex(static_cast<EVP_MD_CTX*>(context_), EVP_sha256(), nullptr);
}
Sha256::~Sha256() { EVP_MD_CTX_free(static_cast<EVP_MD_CTX*>(context_)); }
void Sha256::Update(absl::string_view data) {
  EVP_DigestUpdate(static_cast<EVP_MD_CTX*>(context_), data.data(), data.size());
}
std::string Sha256::HexDigest() {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  EVP_DigestFinal_ex(static_cast<EVP_MD_CTX*>(context_), digest, &length);
  static constexpr char kHex[] = "0123456789abcdef";
  std::string hex;
  for (unsigned int i = 0; i < length; ++i) {
    hex.push_back(kHex[digest[i] >> 4]);
    hex.push_back(kHex[digest[i] & 15]);
  }
  return hex;
}

std::string Sha256OfString(absl::string_view data) {
  Sha256 hasher;
  hasher.Update(data);
  return hasher.HexDigest();
}

namespace {

absl::Status ErrnoError(absl::string_view operation, const std::string& path) {
  return absl::InternalError(absl::StrCat(operation, "(", path, "): ", std::strerror(errno)));
}

// Hashes [0, length) of an open file into `hasher`.
absl::Status HashPrefix(int descriptor, int64_t length, Sha256& hasher, const std::string& path) {
  std::string buffer(1 << 20, '\0');
  int64_t offset = 0;
  while (offset < length) {
    ssize_t got = pread(descriptor, buffer.data(), std::min<int64_t>(buffer.size(), length - offset), offset);
    if (got < 0) return ErrnoError("pread", path);
    if (got == 0) return absl::DataLossError(absl::StrCat("read ", path, ": file shorter than ", length, " bytes"));
    hasher.Update(absl::string_view(buffer.data(), got));
    offset += got;
  }
  return absl::OkStatus();
}

absl::Status SyncDirectory(const std::string& path) {
  int descriptor = open(path.c_str(), O_RDONLY | O_DIRECTORY);
  if (descriptor < 0) return ErrnoError("open", path);
  int result = fsync(descriptor);
  close(descriptor);
  if (result != 0) return ErrnoError("fsync", path);
  return absl::OkStatus();
}

}  // namespace

std::string StreamedUploadKey(absl::string_view namespace_name, absl::string_view name, absl::string_view upload_id) {
  return Sha256OfString(absl::StrCat("flotilla streamed upload\n", namespace_name, "/", name, "\n", upload_id));
}

absl::Status ValidateUploadId(absl::string_view upload_id) {
  const bool valid_characters = std::all_of(upload_id.begin(), upload_id.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
           c == '-';
  });
  if (upload_id.empty() || upload_id.size() > 128 || !valid_characters) {
    return absl::InvalidArgumentError(absl::StrCat("upload id \"", upload_id.substr(0, 160),
                                                   "\": expected 1-128 characters of [A-Za-z0-9._-]"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> Sha256OfFile(const std::string& path) {
  int descriptor = open(path.c_str(), O_RDONLY);
  if (descriptor < 0) return ErrnoError("open", path);
  struct stat status;
  fstat(descriptor, &status);
  Sha256 hasher;
  absl::Status hashed = HashPrefix(descriptor, status.st_size, hasher, path);
  close(descriptor);
  if (!hashed.ok()) return hashed;
  return hasher.HexDigest();
}

// Note [Direct upload writes]: a large upload's bytes bypass the page cache. Profiling a 1 GiB
// `flotilla push` showed half of the registry's CPU in the kernel's copy of each pwrite into the
// page cache (copy_folio_from_iter_atomic), and that copy's cost swings 3-4x with the machine's
// memory pressure (the kernel must reclaim page cache to make room): `dd bs=4M conv=fsync` of the
// same 1 GiB took 0.38-1.45 s of system time in three runs, `dd bs=8M oflag=direct conv=fsync`
// 0.20-0.28 s (2026-12-07, load 2.4-2.9). So the bytes are gathered in an aligned 8 MiB buffer
// (a copy of data still in the CPU's cache after its sha256) and written with O_DIRECT, which the
// device reads by DMA; only the unaligned tail goes through the page cache, and the fsync in
// Finish has little left to flush. Where O_DIRECT is refused (tmpfs, or a resume at an offset
// that is not 4 KiB aligned) every write is buffered, as before. Two buffers alternate: a full
// one is sha256-hashed on a second thread (BufferHasher) while it is written and the other fills,
// which took a 1 GiB push from 2.18 to 1.64 s (medians of 4 interleaved rounds, load 1.8; the same
// registry CPU, 0.95 s).
absl::Status WriteFileDurably(const std::string& path, absl::string_view bytes) {
  const int descriptor = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (descriptor < 0) return ErrnoError("create", path);
  struct CloseAtEnd {
    int descriptor;
    ~CloseAtEnd() { close(descriptor); }
  } close_at_end{descriptor};
  // A buffer at a time through O_DIRECT while it is accepted; the rest through the page cache.
  const auto size = static_cast<int64_t>(bytes.size());
  DirectWriter direct(path, 0, size, /*buffer_count=*/1);
  int64_t written = 0;
  while (direct.active() && written < size) {
    const int64_t piece = std::min(DirectWriter::kBufferBytes, size - written);
    std::memcpy(direct.buffer(0), bytes.data() + written, static_cast<size_t>(piece));
    if (absl::Status status = direct.Write(descriptor, direct.buffer(0), piece, written); !status.ok()) return status;
    written += piece;
  }
  if (absl::Status status = WriteAll(descriptor, bytes.data() + written, size - written, written, path); !status.ok()) {
    return status;
  }
  if (fsync(descriptor) != 0) return ErrnoError("fsync", path);
  return absl::OkStatus();
}

// Hashes whole direct-write buffers on a second thread (Note [Direct upload writes]): the upload's
// sha256 was over a third of the registry's CPU during a push, on the thread that also receives
// and writes; here it overlaps with them. One buffer at a time; Wait returns once it is hashed.
class BufferHasher {
 public:
  explicit BufferHasher(Sha256& hasher) : hasher_(hasher) {}
  ~BufferHasher() {
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
    }
    changed_.notify_all();
    if (thread_.joinable()) thread_.join();
  }
  // Hashes `bytes` after everything submitted before; the caller keeps them alive until Wait.
  void Submit(absl::string_view bytes) {
    Wait();
    std::lock_guard lock(mutex_);
    if (!thread_.joinable()) thread_ = std::thread([this] { Run(); });
    pending_ = bytes;
    busy_ = true;
    changed_.notify_all();
  }
  void Wait() {
    std::unique_lock lock(mutex_);
    changed_.wait(lock, [&] { return !busy_; });
  }

 private:
  void Run() {
    std::unique_lock lock(mutex_);
    while (true) {
      changed_.wait(lock, [&] { return busy_ || stopping_; });
      if (!busy_) return;
      const absl::string_view bytes = pending_;
      lock.unlock();
      hasher_.Update(bytes);
      lock.lock();
      busy_ = false;
      changed_.notify_all();
    }
  }

  Sha256& hasher_;
  std::mutex mutex_;
  std::condition_variable changed_;
  absl::string_view pending_;  // guarded by mutex_
  bool busy_ = false;          // guarded by mutex_
  bool stopping_ = false;      // guarded by mutex_
  std::thread thread_;
};

class LocalBlobUpload final : public BlobUpload {
 public:
  LocalBlobUpload(LocalBlobStore* store, std::string sha256, int64_t size, int descriptor, int64_t offset)
      : store_(store), sha256_(std::move(sha256)), size_(size), descriptor_(descriptor), committed_(offset),
        written_back_(offset), direct_(store->PartialPath(sha256_), offset, size - offset, /*buffer_count=*/2),
        buffer_(direct_.active() ? direct_.buffer(0) : nullptr), flushed_(offset) {}
  ~LocalBlobUpload() override {
    if (descriptor_ >= 0) {
      // An abandoned upload keeps its bytes for resume; make them durable first.
      FlushBuffer(/*whole=*/true).IgnoreError();
      fdatasync(descriptor_);
      close(descriptor_);
    }
    background_hasher_.reset();  // joins its thread before the buffers go
    store_->EndUpload(sha256_);
  }

  absl::Status Prime() {
    // Resuming: the bytes already on disk count towards the digest.
    return HashPrefix(descriptor_, committed_, hasher_, store_->PartialPath(sha256_));
  }

  int64_t committed_size() const override { return committed_; }

  absl::Status Append(absl::string_view data) override {
    if (committed_ + static_cast<int64_t>(data.size()) > size_) {
      return absl::OutOfRangeError(absl::StrCat("upload of blob ", sha256_, ": data runs past the announced size ",
                                                size_, " (", committed_, " bytes held, ", data.size(), " more sent)"));
    }
    // Note [Direct upload writes]: gathered, then hashed (on the second thread) and written a whole
    // buffer at a time; once a direct write is refused (buffer_ null), the rest goes buffered.
    if (buffer_ != nullptr) {
      while (buffer_ != nullptr && !data.empty()) {
        const size_t room = static_cast<size_t>(DirectWriter::kBufferBytes - (committed_ - flushed_));
        const size_t taken = std::min(room, data.size());
        std::memcpy(buffer_ + (committed_ - flushed_), data.data(), taken);
        committed_ += static_cast<int64_t>(taken);
        data.remove_prefix(taken);
        if (committed_ - flushed_ == DirectWriter::kBufferBytes) {
          if (absl::Status status = FlushBuffer(/*whole=*/false); !status.ok()) return status;
        }
      }
      if (data.empty()) return absl::OkStatus();
    }
    hasher_.Update(data);
    if (absl::Status status = WriteAll(descriptor_, data.data(), static_cast<int64_t>(data.size()), committed_,
                                       store_->PartialPath(sha256_));
        !status.ok()) {
      return status;
    }
    committed_ += static_cast<int64_t>(data.size());
    // Start writeback of each completed 16 MiB as it arrives, so the fsync in Finish has little
    // left to flush: the disk works while the network does, instead of after it.
    constexpr int64_t kWritebackBytes = 16 << 20;
    while (committed_ - written_back_ >= kWritebackBytes) {
      sync_file_range(descriptor_, written_back_, kWritebackBytes, SYNC_FILE_RANGE_WRITE);
      written_back_ += kWritebackBytes;
    }
    return absl::OkStatus();
  }

  absl::Status Sync() override {
    if (absl::Status status = FlushBuffer(/*whole=*/true); !status.ok()) return status;
    if (fdatasync(descriptor_) != 0) return ErrnoError("fdatasync", store_->PartialPath(sha256_));
    return absl::OkStatus();
  }

  absl::Status Finish() override { return FinishAs(sha256_); }

  // `sha256_` names the partial file (the blob's digest, or a StreamedUploadKey); `sha256` the blob.
  absl::Status FinishAs(const std::string& sha256) override {
    if (absl::Status valid = ValidateSha256(sha256); !valid.ok()) return valid;
    const std::string partial = store_->PartialPath(sha256_);
    if (committed_ != size_) {
      return absl::FailedPreconditionError(absl::StrCat("upload of blob ", sha256, ": ", committed_, " of ", size_,
                                                        " bytes received; resume from offset ", committed_));
    }
    if (descriptor_ < 0) return absl::FailedPreconditionError(absl::StrCat("upload of blob ", sha256, ": finished already"));
    if (absl::Status status = FlushBuffer(/*whole=*/true); !status.ok()) return status;
    std::string actual = hasher_.HexDigest();
    if (actual != sha256) {
      close(descriptor_);
      descriptor_ = -1;
      unlink(partial.c_str());
      return absl::DataLossError(absl::StrCat("upload of blob ", sha256, ": the ", size_,
                                              " bytes received hash to sha256 ", actual, "; nothing was stored"));
    }
    if (fsync(descriptor_) != 0) return ErrnoError("fsync", partial);
    close(descriptor_);
    descriptor_ = -1;
    const std::string final_path = store_->BlobPath(sha256);
    std::error_code error;
    fs::create_directories(fs::path(final_path).parent_path(), error);
    if (rename(partial.c_str(), final_path.c_str()) != 0) return ErrnoError("rename", final_path);
    return SyncDirectory(fs::path(final_path).parent_path());
  }

 private:
  // Writes the gathered bytes [flushed_, committed_), after handing them to the hasher: the
  // aligned part with O_DIRECT, and with `whole` the unaligned rest through the page cache, after
  // which the upload stays buffered (the next direct write would start unaligned). A full buffer
  // is hashed on the second thread while it is written and the other buffer fills; otherwise the
  // hash is finished here, so every byte received is hashed, once and in order, when this returns.
  absl::Status FlushBuffer(bool whole) {
    if (buffer_ == nullptr) return absl::OkStatus();
    const int64_t gathered = committed_ - flushed_;
    const absl::string_view bytes(buffer_, static_cast<size_t>(gathered));
    if (!whole) {
      if (background_hasher_ == nullptr) background_hasher_ = std::make_unique<BufferHasher>(hasher_);
      background_hasher_->Submit(bytes);
    } else {
      if (background_hasher_ != nullptr) background_hasher_->Wait();
      hasher_.Update(bytes);
    }
    if (absl::Status status = direct_.Write(descriptor_, buffer_, gathered, flushed_); !status.ok()) {
      if (background_hasher_ != nullptr) background_hasher_->Wait();
      return status;
    }
    flushed_ = committed_;
    written_back_ = committed_;
    if (whole || !direct_.active()) {
      if (background_hasher_ != nullptr) background_hasher_->Wait();
      direct_.Deactivate();
      buffer_ = nullptr;  // buffered from now on; the buffers are freed with the upload
    } else {
      // Fill the other buffer while this one is hashed; Submit waits for the hash before it.
      // (That one was submitted a flush ago, and Submit above waited for its hash.)
      buffer_ = buffer_ == direct_.buffer(0) ? direct_.buffer(1) : direct_.buffer(0);
    }
    return absl::OkStatus();
  }

  LocalBlobStore* store_;
  std::string sha256_;
  int64_t size_;
  int descriptor_;
  int64_t committed_;
  int64_t written_back_;  // writeback started for [0, written_back_)
  Sha256 hasher_;
  DirectWriter direct_;     // two buffers: one fills while the other is hashed and written
  char* buffer_ = nullptr;  // the one gathering bytes [flushed_, committed_); null once buffered
  int64_t flushed_;         // bytes written to the file
  std::unique_ptr<BufferHasher> background_hasher_;  // hashes full buffers; last, so it stops first
};

absl::StatusOr<std::unique_ptr<LocalBlobStore>> LocalBlobStore::Open(const std::string& root,
                                                                     absl::Duration stale_partial_age) {
  std::error_code error;
  for (const char* folder : {"blobs", "uploads"}) {
    fs::create_directories(fs::path(root) / folder, error);
    if (error) {
      return absl::FailedPreconditionError(
          absl::StrCat("open blob store: cannot create ", (fs::path(root) / folder).string(), ": ", error.message()));
    }
  }
  auto store = std::unique_ptr<LocalBlobStore>(new LocalBlobStore(root));
  const auto now = fs::file_time_type::clock::now();
  for (const auto& entry : fs::directory_iterator(fs::path(root) / "uploads", error)) {
    auto modified = entry.last_write_time(error);
    if (error) continue;
    if (now - modified > absl::ToChronoNanoseconds(stale_partial_age) || entry.path().extension() == ".tmp") {
      fs::remove(entry.path(), error);
      ++store->removed_stale_partials_;
    }
  }
  return store;
}

std::string LocalBlobStore::BlobPath(const std::string& sha256) const {
  return absl::StrCat(root_, "/blobs/", sha256.substr(0, 2), "/", sha256);
}
std::string LocalBlobStore::PartialPath(const std::string& sha256) const {
  return absl::StrCat(root_, "/uploads/", sha256, ".partial");
}

absl::StatusOr<int64_t> LocalBlobStore::Size(const std::string& sha256) {
  if (absl::Status valid = ValidateSha256(sha256); !valid.ok()) return valid;
  struct stat status;
  if (stat(BlobPath(sha256).c_str(), &status) != 0) {
    return absl::NotFoundError(absl::StrCat("blob ", sha256, " is not in the registry"));
  }
  return static_cast<int64_t>(status.st_size);
}

absl::Status LocalBlobStore::Touch(const std::string& sha256) {
  if (utimensat(AT_FDCWD, BlobPath(sha256).c_str(), nullptr, 0) != 0) {
    return absl::NotFoundError(absl::StrCat("blob ", sha256, " is not in the registry"));
  }
  return absl::OkStatus();
}

int64_t LocalBlobStore::PartialSize(const std::string& sha256) {
  struct stat status;
  if (ValidateSha256(sha256).ok() && stat(PartialPath(sha256).c_str(), &status) == 0) return status.st_size;
  return 0;
}

absl::StatusOr<std::unique_ptr<BlobUpload>> LocalBlobStore::BeginUpload(const std::string& sha256, int64_t size,
                                                                         int64_t offset) {
  if (absl::Status valid = ValidateSha256(sha256); !valid.ok()) return valid;
  if (size < 0) return absl::InvalidArgumentError(absl::StrCat("upload of blob ", sha256, ": negative size ", size));
  if (Size(sha256).ok()) {
    return absl::AlreadyExistsError(absl::StrCat("blob ", sha256, " is already in the registry"));
  }
  {
    std::lock_guard lock(mutex_);
    if (!uploads_in_progress_.insert(sha256).second) {
      return absl::UnavailableError(
          absl::StrCat("another upload of blob ", sha256, " is in progress; retry once it ends"));
    }
  }
  const std::string partial = PartialPath(sha256);
  int descriptor = open(partial.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (descriptor < 0) {
    EndUpload(sha256);
    return ErrnoError("open", partial);
  }
  struct stat status;
  fstat(descriptor, &status);
  int64_t held = status.st_size;
  if (offset != 0 && offset != held) {
    close(descriptor);
    EndUpload(sha256);
    return absl::FailedPreconditionError(absl::StrCat("upload of blob ", sha256, ": cannot start at offset ", offset,
                                                      "; the registry holds ", held, " bytes, resume from there (or 0)"));
  }
  if (offset == 0 && held != 0) {
    if (ftruncate(descriptor, 0) != 0) {
      close(descriptor);
      EndUpload(sha256);
      return ErrnoError("ftruncate", partial);
    }
    held = 0;
  }
  if (held > size) {
    close(descriptor);
    unlink(partial.c_str());
    EndUpload(sha256);
    return absl::FailedPreconditionError(absl::StrCat("upload of blob ", sha256, ": the partial upload (", held,
                                                      " bytes) is larger than the announced size ", size,
                                                      "; it was discarded, start again from 0"));
  }
  // The upload object now owns the descriptor and the in-progress mark.
  auto upload = std::make_unique<LocalBlobUpload>(this, sha256, size, descriptor, held);
  if (absl::Status primed = upload->Prime(); !primed.ok()) return primed;
  return upload;
}

void LocalBlobStore::EndUpload(const std::string& sha256) {
  std::lock_guard lock(mutex_);
  uploads_in_progress_.erase(sha256);
}

absl::Status LocalBlobStore::Read(const std::string& sha256, int64_t offset, int64_t length, std::string* buffer) {
  if (absl::Status valid = ValidateSha256(sha256); !valid.ok()) return valid;
  const std::string path = BlobPath(sha256);
  int descriptor = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (descriptor < 0) return absl::NotFoundError(absl::StrCat("blob ", sha256, " is not in the registry"));
  buffer->resize(length);
  int64_t filled = 0;
  while (filled < length) {
    ssize_t got = pread(descriptor, buffer->data() + filled, length - filled, offset + filled);
    if (got < 0) {
      if (errno == EINTR) continue;
      close(descriptor);
      return ErrnoError("pread", path);
    }
    if (got == 0) break;
    filled += got;
  }
  close(descriptor);
  buffer->resize(filled);
  return absl::OkStatus();
}

std::string LocalBlobStore::LocalPath(const std::string& sha256) { return BlobPath(sha256); }

absl::Status LocalBlobStore::Delete(const std::string& sha256) {
  if (absl::Status valid = ValidateSha256(sha256); !valid.ok()) return valid;
  if (unlink(BlobPath(sha256).c_str()) != 0 && errno != ENOENT) return ErrnoError("unlink", BlobPath(sha256));
  return absl::OkStatus();
}

absl::Status LocalBlobStore::ForEachBlob(const std::function<void(const BlobInfo&)>& visit) {
  std::error_code error;
  for (const auto& entry : fs::recursive_directory_iterator(fs::path(root_) / "blobs", error)) {
    if (!entry.is_regular_file(error)) continue;
    struct stat status;
    if (stat(entry.path().c_str(), &status) != 0) continue;
    BlobInfo info;
    info.sha256 = entry.path().filename().string();
    info.size = status.st_size;
    info.modified = absl::FromTimeT(status.st_mtime);
    visit(info);
  }
  if (error) return absl::InternalError(absl::StrCat("list blobs under ", root_, ": ", error.message()));
  return absl::OkStatus();
}

std::set<std::string> LocalBlobStore::UploadsInProgress() {
  std::lock_guard lock(mutex_);
  return uploads_in_progress_;
}

}  // namespace flotilla::registry
