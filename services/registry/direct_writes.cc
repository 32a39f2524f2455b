#include "services/registry/direct_writes.h"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>

#include <absl/strings/str_cat.h>

namespace flotilla::registry {
namespace {
std::atomic<int64_t> refused_from_offset{-1};  // RefuseFromOffsetForTesting
}  // namespace

void DirectWriter::RefuseFromOffsetForTesting(int64_t offset) { refused_from_offset.store(offset); }

absl::Status WriteAll(int descriptor, const char* data, int64_t length, int64_t offset, const std::string& path) {
  while (length > 0) {
    const ssize_t written = pwrite(descriptor, data, static_cast<size_t>(length), offset);
    if (written < 0 && errno == EINTR) continue;
    if (written <= 0) {
      return absl::InternalError(absl::StrCat("write(", path, "): ", written < 0 ? std::strerror(errno) : "no progress"));
    }
    data += written;
    length -= written;
    offset += written;
  }
  return absl::OkStatus();
}

DirectWriter::DirectWriter(const std::string& path, int64_t offset, int64_t bytes_to_come, int buffer_count)
    : path_(path) {
  if (bytes_to_come < kMinimumBytes || offset % kAlignment != 0) return;
  descriptor_ = open(path.c_str(), O_WRONLY | O_DIRECT | O_CLOEXEC);
  if (descriptor_ < 0) return;
  for (int index = 0; index < buffer_count; ++index) {
    void* buffer = nullptr;
    if (posix_memalign(&buffer, kAlignment, kBufferBytes) != 0) {
      Deactivate();
      return;
    }
    buffers_.push_back(static_cast<char*>(buffer));
  }
}

DirectWriter::~DirectWriter() {
  Deactivate();
  for (char* buffer : buffers_) free(buffer);
}

void DirectWriter::Deactivate() {
  if (descriptor_ >= 0) close(descriptor_);
  descriptor_ = -1;
}

absl::Status DirectWriter::Write(int buffered_descriptor, const char* data, int64_t length, int64_t offset) {
  const int64_t aligned = active() ? length - length % kAlignment : 0;
  int64_t done = 0;
  const int64_t refused_from = refused_from_offset.load(std::memory_order_relaxed);
  while (done < aligned && (refused_from < 0 || offset + aligned <= refused_from)) {
    const ssize_t written = pwrite(descriptor_, data + done, static_cast<size_t>(aligned - done), offset + done);
    if (written < 0 && errno == EINTR) continue;
    if (written <= 0 || written % kAlignment != 0) break;  // refused (a full disk, say): the rest buffered
    done += written;
  }
  if (done < aligned) Deactivate();
  return WriteAll(buffered_descriptor, data + done, length - done, offset + done, path_);
}

}  // namespace flotilla::registry
