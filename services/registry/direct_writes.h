// Writing large files past the page cache: a file's bytes gathered in 4 KiB-aligned buffers and
// written with O_DIRECT, the unaligned rest through the file's ordinary descriptor. The registry
// writes uploads and xorbs this way (Note [Direct upload writes] in blob_store.cc) and the client
// its downloads (Note [Direct pull writes] in registry_client.cc): the kernel's copy into freshly
// allocated page cache was most of their CPU, and a copy into a buffer plus a DMA costs less.
//
//   DirectWriter direct(path, offset, bytes_to_come, /*buffer_count=*/1);
//   if (direct.active()) { ...gather into direct.buffer(0)...; direct.Write(descriptor, ...); }
//   if (!direct.active()) { ...write through `descriptor` as usual... }
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <absl/status/status.h>

namespace flotilla::registry {

// Writes [data, data + length) at `offset` through `descriptor`, continuing after short writes.
absl::Status WriteAll(int descriptor, const char* data, int64_t length, int64_t offset, const std::string& path);

// An O_DIRECT descriptor on one file and the aligned buffers its writes come from. Where direct
// writes are not worth it or not possible — fewer than kMinimumBytes to come, an offset that is not
// aligned (a resume), a filesystem that refuses O_DIRECT at open (tmpfs) or at the first write — it
// is inactive, and the caller writes through its own descriptor. Not thread-safe; the buffers live
// as long as the writer, also after it turns inactive (a hasher may still be reading one).
class DirectWriter {
 public:
  static constexpr int64_t kAlignment = 4096;
  static constexpr int64_t kBufferBytes = 8 << 20;
  static constexpr int64_t kMinimumBytes = 16 << 20;  // smaller files gain nothing from it

  // `bytes_to_come`: what will be written from `offset` on.
  DirectWriter(const std::string& path, int64_t offset, int64_t bytes_to_come, int buffer_count);
  ~DirectWriter();
  DirectWriter(const DirectWriter&) = delete;
  DirectWriter& operator=(const DirectWriter&) = delete;

  bool active() const { return descriptor_ >= 0; }
  char* buffer(int index) const { return buffers_[static_cast<size_t>(index)]; }

  // Writes [data, data + length) — within one of the buffers — at `offset`: the aligned head with
  // O_DIRECT and the rest through `buffered_descriptor`. A refused direct write sends the rest
  // through `buffered_descriptor` too and makes the writer inactive, so no byte is lost; an error
  // means the buffered write failed as well.
  absl::Status Write(int buffered_descriptor, const char* data, int64_t length, int64_t offset);

  // Writes stop going direct (the next would start unaligned).
  void Deactivate();

  // Tests: direct writes reaching past `offset` of any file are refused from now on, as a kernel
  // refuses them (a filesystem without O_DIRECT writes, a full disk); negative: none refused.
  static void RefuseFromOffsetForTesting(int64_t offset);

 private:
  std::string path_;
  int descriptor_ = -1;
  std::vector<char*> buffers_;
};

}  // namespace flotilla::registry
