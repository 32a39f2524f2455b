// Safetensors: read (mmap, zero-copy where possible) and write the format Hugging Face checkpoints
// use. A file is an 8-byte little-endian header length, a JSON header naming each tensor's dtype,
// shape and [begin, end) byte range in the data section, then the data.
//
//   ASSIGN_OR_RETURN(auto checkpoint, SafetensorsCheckpoint::Open("/models/smollm2"));
//   at::Tensor weight = checkpoint->Get("model.embed_tokens.weight").value();
//   RETURN_IF_ERROR(SaveSafetensors("/tmp/out.safetensors", {{"logits", logits}}));
//
// Every validation error names the file, the tensor and what was expected: the header length must
// fit the file, offsets must be in range, contiguous and non-overlapping, dtypes known, and each
// tensor's byte count must equal its shape times its element size.
//
// Thread-safety: an opened SafetensorsFile / SafetensorsCheckpoint is immutable; Get() may be
// called from several threads. Tensors returned by Get() keep the mapping alive.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <ATen/ATen.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "models/safetensors_header.h"

namespace flotilla::models {

// The ATen dtype for a safetensors dtype string ("F32" -> kFloat), or an error for unknown ones.
absl::StatusOr<at::ScalarType> SafetensorsDtypeToScalarType(std::string_view dtype);
absl::StatusOr<std::string> ScalarTypeToSafetensorsDtype(at::ScalarType scalar_type);

// `bytes` zeroed bytes (kByte) on 2 MiB pages where the kernel gives them (Note [Weights on
// huge pages] in safetensors.cc), for weights that are converted or sharded rather than mapped;
// ordinary (uninitialised) memory below 2 MiB or if the mapping fails.
at::Tensor EmptyBytesOnHugePages(int64_t bytes);

// One memory-mapped file. The mapping is private and writable (copy-on-write), so tensors that
// alias it may be modified in place without touching the file.
class SafetensorsFile : public std::enable_shared_from_this<SafetensorsFile> {
 public:
  static absl::StatusOr<std::shared_ptr<SafetensorsFile>> Open(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const SafetensorsHeader& header() const { return header_; }
  const SafetensorsTensorInfo* Find(std::string_view name) const;
  // A CPU tensor over the mapping (zero-copy) when its data is aligned for its dtype, else a copy.
  absl::StatusOr<at::Tensor> Get(std::string_view name);
  // Raw bytes of a tensor inside the mapping.
  const uint8_t* Data(const SafetensorsTensorInfo& info) const;

 private:
  SafetensorsFile() = default;
  std::string path_;
  void* mapping_ = nullptr;
  size_t mapping_size_ = 0;
  SafetensorsHeader header_;
  std::map<std::string, size_t, std::less<>> index_;
};

// A checkpoint folder: model.safetensors, or model.safetensors.index.json with its shards.
class SafetensorsCheckpoint {
 public:
  // `path` is a folder or a single .safetensors file.
  static absl::StatusOr<std::unique_ptr<SafetensorsCheckpoint>> Open(const std::string& path);

  std::vector<std::string> TensorNames() const;
  bool Contains(std::string_view name) const { return location_.count(std::string(name)) > 0; }
  // The header entry and the file it lives in.
  absl::StatusOr<std::pair<SafetensorsFile*, const SafetensorsTensorInfo*>> Locate(std::string_view name) const;
  absl::StatusOr<at::Tensor> Get(std::string_view name) const;
  const std::vector<std::shared_ptr<SafetensorsFile>>& files() const { return files_; }

 private:
  std::vector<std::shared_ptr<SafetensorsFile>> files_;
  std::map<std::string, size_t> location_;  // tensor name -> index in files_
};

// Writes tensors (any device, contiguous or not) in the order given, with optional metadata
// ({"format": "pt"} is what transformers writes and expects).
absl::Status SaveSafetensors(const std::string& path,
                             const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                             const std::map<std::string, std::string>& metadata = {{"format", "pt"}});

}  // namespace flotilla::models
