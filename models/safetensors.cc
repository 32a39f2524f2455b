#include "models/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace flotilla::models {
namespace {

constexpr std::pair<const char*, at::ScalarType> kDtypes[] = {
    {"F64", at::kDouble}, {"F32", at::kFloat},  {"F16", at::kHalf},  {"BF16", at::kBFloat16},
    {"I64", at::kLong},   {"I32", at::kInt},    {"I16", at::kShort}, {"I8", at::kChar},
    {"U8", at::kByte},    {"BOOL", at::kBool},
};

}  // namespace

absl::StatusOr<at::ScalarType> SafetensorsDtypeToScalarType(std::string_view dtype) {
  for (const auto& [name, scalar_type] : kDtypes) {
    if (dtype == name) return scalar_type;
  }
  auto size = SafetensorsDtypeSize(dtype);  // the error lists the known dtypes
  if (!size.ok()) return size.status();
  return absl::InvalidArgumentError(absl::StrCat("dtype ", std::string(dtype), " has no ATen equivalent"));
}

absl::StatusOr<std::string> ScalarTypeToSafetensorsDtype(at::ScalarType scalar_type) {
  for (const auto& [name, known] : kDtypes) {
    if (scalar_type == known) return std::string(name);
  }
  return absl::InvalidArgumentError(
      absl::StrCat("dtype ", c10::toString(scalar_type), " has no safetensors equivalent"));
}

at::Tensor EmptyBytesOnHugePages(int64_t bytes) {
  constexpr size_t kHugePage = size_t{2} << 20;
  const auto options = at::TensorOptions().dtype(at::kByte);
  if (bytes < static_cast<int64_t>(kHugePage)) return at::empty({bytes}, options);
  // glibc would map a block this large with 4 KiB pages behind a 16-byte header; this is its own
  // mapping, over-mapped by one huge page and trimmed to an aligned run.
  const size_t length = (static_cast<size_t>(bytes) + kHugePage - 1) / kHugePage * kHugePage;
  void* mapping = ::mmap(nullptr, length + kHugePage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mapping == MAP_FAILED) return at::empty({bytes}, options);
  const uintptr_t start = reinterpret_cast<uintptr_t>(mapping);
  const uintptr_t aligned = (start + kHugePage - 1) / kHugePage * kHugePage;
  if (aligned > start) ::munmap(mapping, aligned - start);
  const uintptr_t mapping_end = start + length + kHugePage;
  if (mapping_end > aligned + length) {
    ::munmap(reinterpret_cast<void*>(aligned + length), mapping_end - aligned - length);
  }
  void* data = reinterpret_cast<void*>(aligned);
  ::madvise(data, length, MADV_HUGEPAGE);
  return at::from_blob(
      data, {bytes}, [length](void* pointer) { ::munmap(pointer, length); }, options);
}

absl::StatusOr<std::shared_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  int descriptor = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (descriptor < 0) {
    return absl::NotFoundError(absl::StrCat("SafetensorsFile::Open(", path, "): ", std::strerror(errno)));
  }
  struct stat file_stat {};
  ::fstat(descriptor, &file_stat);
  std::shared_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = path;
  file->mapping_size_ = static_cast<size_t>(file_stat.st_size);
  if (file->mapping_size_ > 0) {
    void* mapping = ::mmap(nullptr, file->mapping_size_, PROT_READ | PROT_WRITE, MAP_PRIVATE, descriptor, 0);
    if (mapping == MAP_FAILED) {
      ::close(descriptor);
      return absl::InternalError(absl::StrCat("SafetensorsFile::Open(", path, "): mmap: ", std::strerror(errno)));
    }
    file->mapping_ = mapping;
    // Note [Weights on huge pages]: batch-1 decode streams every weight once per token, and with
    // 4 KiB pages that is a TLB miss every 64 cache lines. Asking for huge pages makes the page
    // faults read the file into 2 MiB page-cache folios, which the kernel then maps with one entry
    // each (FilePmdMapped in /proc/PID/smaps; ext4 and xfs have large folios since Linux 6.x).
    // SmolLM2 batch-1 decode with the file evicted before each run, 4 interleaved rounds: 64.3
    // tokens/s median with this advice off (55 of 525 MiB PMD-mapped) and 69.2 with it on (all of
    // them); rounds 60-70 and 62-72.
    // Only bytes read by the faults get large folios: a file still cached from being written keeps
    // the folios its writer made (`flotilla pull` writes large files past the page cache). Advice,
    // not a requirement: a kernel that refuses it maps 4 KiB pages as before.
    ::madvise(mapping, file->mapping_size_, MADV_HUGEPAGE);
  }
  ::close(descriptor);
  auto header = ParseSafetensorsHeader(
      std::string_view(static_cast<const char*>(file->mapping_), file->mapping_size_), path);
  if (!header.ok()) return header.status();
  file->header_ = *std::move(header);
  for (size_t i = 0; i < file->header_.tensors.size(); ++i) file->index_[file->header_.tensors[i].name] = i;
  return file;
}

SafetensorsFile::~SafetensorsFile() {
  if (mapping_ != nullptr) ::munmap(mapping_, mapping_size_);
}

const SafetensorsTensorInfo* SafetensorsFile::Find(std::string_view name) const {
  auto found = index_.find(name);
  return found == index_.end() ? nullptr : &header_.tensors[found->second];
}

const uint8_t* SafetensorsFile::Data(const SafetensorsTensorInfo& info) const {
  return static_cast<const uint8_t*>(mapping_) + header_.data_offset + info.begin;
}

absl::StatusOr<at::Tensor> SafetensorsFile::Get(std::string_view name) {
  const SafetensorsTensorInfo* info = Find(name);
  if (info == nullptr) {
    return absl::NotFoundError(absl::StrCat("SafetensorsFile::Get(", path_, "): no tensor named ", std::string(name)));
  }
  auto scalar_type = SafetensorsDtypeToScalarType(info->dtype);
  if (!scalar_type.ok()) return scalar_type.status();
  auto options = at::TensorOptions().dtype(*scalar_type).device(at::kCPU);
  uint8_t* data = const_cast<uint8_t*>(Data(*info));
  if (info->end == info->begin) return at::empty(info->shape, options);
  if (reinterpret_cast<uintptr_t>(data) % c10::elementSize(*scalar_type) != 0) {
    at::Tensor copy = at::empty(info->shape, options);
    std::memcpy(copy.data_ptr(), data, info->end - info->begin);
    return copy;
  }
  // The deleter holds the file, so the mapping outlives every tensor that aliases it.
  auto keep_alive = shared_from_this();
  return at::from_blob(data, info->shape, [keep_alive](void*) {}, options);
}

absl::StatusOr<std::unique_ptr<SafetensorsCheckpoint>> SafetensorsCheckpoint::Open(const std::string& path) {
  namespace fs = std::filesystem;
  auto checkpoint = std::unique_ptr<SafetensorsCheckpoint>(new SafetensorsCheckpoint());
  std::vector<std::string> shard_paths;
  std::map<std::string, std::string> index_map;
  if (fs::is_regular_file(path)) {
    shard_paths.push_back(path);
  } else if (fs::exists(fs::path(path) / "model.safetensors.index.json")) {
    const std::string index_path = (fs::path(path) / "model.safetensors.index.json").string();
    std::ifstream stream(index_path);
    nlohmann::json index = nlohmann::json::parse(stream, nullptr, false);
    if (index.is_discarded() || !index.contains("weight_map") || !index["weight_map"].is_object()) {
      return absl::InvalidArgumentError(
          absl::StrCat("SafetensorsCheckpoint::Open(", index_path, "): expected a JSON object with \"weight_map\""));
    }
    for (const auto& [name, shard] : index["weight_map"].items()) {
      if (!shard.is_string()) {
        return absl::InvalidArgumentError(
            absl::StrCat("SafetensorsCheckpoint::Open(", index_path, "): weight_map.", std::string(name), " must be a file name"));
      }
      index_map[name] = shard.get<std::string>();
      if (std::find(shard_paths.begin(), shard_paths.end(), shard.get<std::string>()) == shard_paths.end()) {
        shard_paths.push_back(shard.get<std::string>());
      }
    }
    for (auto& shard : shard_paths) shard = (fs::path(path) / shard).string();
  } else if (fs::exists(fs::path(path) / "model.safetensors")) {
    shard_paths.push_back((fs::path(path) / "model.safetensors").string());
  } else {
    return absl::NotFoundError(absl::StrCat("SafetensorsCheckpoint::Open(", path,
                                            "): neither model.safetensors nor model.safetensors.index.json found"));
  }
  for (const auto& shard_path : shard_paths) {
    auto file = SafetensorsFile::Open(shard_path);
    if (!file.ok()) return file.status();
    const size_t file_index = checkpoint->files_.size();
    for (const auto& info : (*file)->header().tensors) {
      auto [it, inserted] = checkpoint->location_.emplace(info.name, file_index);
      if (!inserted) {
        return absl::InvalidArgumentError(absl::StrCat("SafetensorsCheckpoint::Open(", path, "): tensor ", info.name,
                                                       " appears in both ", checkpoint->files_[it->second]->path(),
                                                       " and ", shard_path));
      }
    }
    checkpoint->files_.push_back(*std::move(file));
  }
  for (const auto& [name, shard] : index_map) {
    if (!checkpoint->location_.count(name)) {
      return absl::InvalidArgumentError(absl::StrCat("SafetensorsCheckpoint::Open(", path, "): index lists tensor ",
                                                     std::string(name), " in ", shard, " but that file does not contain it"));
    }
  }
  return checkpoint;
}

std::vector<std::string> SafetensorsCheckpoint::TensorNames() const {
  std::vector<std::string> names;
  names.reserve(location_.size());
  for (const auto& [name, file] : location_) names.push_back(name);
  return names;
}

absl::StatusOr<std::pair<SafetensorsFile*, const SafetensorsTensorInfo*>> SafetensorsCheckpoint::Locate(
    std::string_view name) const {
  auto found = location_.find(std::string(name));
  if (found == location_.end()) {
    return absl::NotFoundError(absl::StrCat("checkpoint has no tensor named ", std::string(name)));
  }
  SafetensorsFile* file = files_[found->second].get();
  return std::make_pair(file, file->Find(name));
}

absl::StatusOr<at::Tensor> SafetensorsCheckpoint::Get(std::string_view name) const {
  auto located = Locate(name);
  if (!located.ok()) return located.status();
  return located->first->Get(name);
}

absl::Status SaveSafetensors(const std::string& path, const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                             const std::map<std::string, std::string>& metadata) {
  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::vector<at::Tensor> contiguous;
  uint64_t offset = 0;
  for (const auto& [name, tensor] : tensors) {
    auto dtype = ScalarTypeToSafetensorsDtype(tensor.scalar_type());
    if (!dtype.ok()) return absl::InvalidArgumentError(absl::StrCat("SaveSafetensors(", path, "): tensor ", std::string(name), ": ",
                                                                    dtype.status().message()));
    at::Tensor cpu = tensor.detach().to(at::kCPU).contiguous();
    const uint64_t bytes = cpu.numel() * cpu.element_size();
    header[name] = {{"dtype", *dtype}, {"shape", cpu.sizes().vec()}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
    contiguous.push_back(std::move(cpu));
  }
  std::string header_text = header.dump();
  // Pad with spaces so the data section starts 8-byte aligned, as the reference writer does.
  while ((8 + header_text.size()) % 8 != 0) header_text.push_back(' ');
  std::ofstream stream(path, std::ios::binary | std::ios::trunc);
  if (!stream) return absl::PermissionDeniedError(absl::StrCat("SaveSafetensors(", path, "): cannot open for writing"));
  uint64_t length = header_text.size();
  char prefix[8];
  for (int i = 0; i < 8; ++i) prefix[i] = static_cast<char>((length >> (8 * i)) & 0xff);
  stream.write(prefix, 8);
  stream.write(header_text.data(), static_cast<std::streamsize>(header_text.size()));
  for (const auto& tensor : contiguous) {
    stream.write(static_cast<const char*>(tensor.data_ptr()), static_cast<std::streamsize>(tensor.numel() * tensor.element_size()));
  }
  stream.close();
  if (!stream) return absl::DataLossError(absl::StrCat("SaveSafetensors(", path, "): write failed"));
  return absl::OkStatus();
}

}  // namespace flotilla::models
