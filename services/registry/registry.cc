#include "services/registry/registry.h"

#include <algorithm>

#include <filesystem>
#include <map>
#include <mutex>
#include <set>

#include <absl/strings/match.h>
#include <absl/strings/str_cat.h>
#include <absl/strings/str_join.h>

#include "services/registry/names.h"
#include "services/registry/s3_blob_store.h"

namespace flotilla::registry {
namespace {

bool IsHex(absl::string_view text) {
  for (char character : text) {
    if (!((character >= '0' && character <= '9') || (character >= 'a' && character <= 'f'))) return false;
  }
  return !text.empty();
}

absl::Status ValidateRepository(const std::string& namespace_name, const std::string& name) {
  if (absl::Status status = ValidateRepositoryPart(namespace_name, "namespace"); !status.ok()) return status;
  return ValidateRepositoryPart(name, "name");
}

}  // namespace

absl::StatusOr<std::unique_ptr<Registry>> Registry::Open(const RegistryOptions& options) {
  std::error_code error;
  std::filesystem::create_directories(options.data_directory, error);
  // With PostgreSQL, the metadata and Xet tables share one database and one connection pool; with
  // SQLite each keeps its own file, as it always has.
  std::shared_ptr<SqlDatabase> shared_database;
  if (!options.metadata_url.empty()) {
    auto database = OpenSqlDatabase(options.metadata_url);
    if (!database.ok()) return database.status();
    shared_database = *std::move(database);
  }
  auto metadata = shared_database ? SqlMetadataStore::Open(shared_database)
                                  : SqlMetadataStore::Open(options.data_directory + "/metadata.sqlite3");
  if (!metadata.ok()) return metadata.status();
  std::unique_ptr<BlobStore> blobs;
  S3BlobStore* bucket = nullptr;
  if (!options.blob_url.empty()) {
    S3Options s3 = options.s3;
    std::string prefix;
    if (absl::Status status = ParseS3Url(options.blob_url, &s3.bucket, &prefix); !status.ok()) return status;
    auto opened = S3BlobStore::Open(s3, prefix, options.data_directory, options.stale_partial_age);
    if (!opened.ok()) return opened.status();
    bucket = opened->get();
    blobs = *std::move(opened);
  } else {
    auto opened = LocalBlobStore::Open(options.data_directory, options.stale_partial_age);
    if (!opened.ok()) return opened.status();
    blobs = *std::move(opened);
  }
  auto registry = std::make_unique<Registry>(options, *std::move(metadata), std::move(blobs));
  auto xet = bucket ? XetStore::Open(options.data_directory, *registry->blobs_, shared_database, &bucket->client(),
                                     bucket->prefix() + "xet/xorbs/")
                    : XetStore::Open(options.data_directory, *registry->blobs_, shared_database);
  if (!xet.ok()) return xet.status();
  registry->xet_ = *std::move(xet);
  Registry* raw = registry.get();
  raw->xet_->OnBlobReleased([raw](int64_t size) { raw->stored_bytes_ -= size; });
  int64_t stored = 0;
  if (absl::Status status = registry->blobs_->ForEachBlob([&](const BlobInfo& blob) { stored += blob.size; });
      !status.ok()) {
    return status;
  }
  registry->stored_bytes_ = stored;
  return registry;
}

Registry::Registry(RegistryOptions options, std::unique_ptr<MetadataStore> metadata, std::unique_ptr<BlobStore> blobs)
    : options_(std::move(options)), metadata_(std::move(metadata)), blobs_(std::move(blobs)) {}

absl::StatusOr<RepositoryRecord> Registry::CreateRepository(const std::string& namespace_name, const std::string& name,
                                                            int kind, bool exist_ok) {
  if (absl::Status status = ValidateRepository(namespace_name, name); !status.ok()) return status;
  if (kind < 0 || kind > 3) return absl::InvalidArgumentError(absl::StrCat("create repository: unknown kind ", kind));
  return metadata_->CreateRepository(namespace_name, name, kind == 0 ? 1 : kind, exist_ok);
}

absl::StatusOr<RepositoryRecord> Registry::GetRepository(const std::string& namespace_name, const std::string& name) {
  if (absl::Status status = ValidateRepository(namespace_name, name); !status.ok()) return status;
  return metadata_->GetRepository(namespace_name, name);
}

absl::Status Registry::DeleteRepository(const std::string& namespace_name, const std::string& name) {
  if (absl::Status status = ValidateRepository(namespace_name, name); !status.ok()) return status;
  return metadata_->DeleteRepository(namespace_name, name);
}

absl::StatusOr<CommitRecord> Registry::Resolve(const std::string& namespace_name, const std::string& name,
                                               const std::string& revision) {
  absl::StatusOr<RepositoryRecord> repository = GetRepository(namespace_name, name);
  if (!repository.ok()) return repository.status();
  const std::string wanted = revision.empty() ? repository->default_branch : revision;
  absl::StatusOr<std::vector<RefRecord>> refs = metadata_->ListRefs(namespace_name, name);
  if (!refs.ok()) return refs.status();
  for (const RefRecord& ref : *refs) {
    if (ref.name == wanted) return metadata_->GetCommit(namespace_name, name, ref.commit_id);
  }
  // A commit id or a unique prefix of one (at least 4 hex digits, as git asks).
  if (wanted.size() >= 4 && wanted.size() <= 40 && IsHex(wanted)) {
    absl::StatusOr<std::vector<std::string>> candidates = metadata_->FindCommitsByPrefix(namespace_name, name, wanted);
    if (!candidates.ok()) return candidates.status();
    if (candidates->size() == 1) return metadata_->GetCommit(namespace_name, name, candidates->front());
    if (candidates->size() > 1) {
      return absl::InvalidArgumentError(absl::StrCat("revision '", wanted, "' of ", namespace_name, "/", name,
                                                     " is ambiguous: it prefixes ", absl::StrJoin(*candidates, ", "),
                                                     "; give more digits"));
    }
  }
  std::vector<std::string> branches, tags;
  for (const RefRecord& ref : *refs) (ref.is_tag ? tags : branches).push_back(ref.name);
  if (revision.empty() && refs->empty()) {
    return absl::NotFoundError(absl::StrCat("repository ", namespace_name, "/", name,
                                            " has no commit yet (push to it first)"));
  }
  return absl::NotFoundError(absl::StrCat("revision '", wanted, "' not found in ", namespace_name, "/", name,
                                          " (branches: ", branches.empty() ? "none" : absl::StrJoin(branches, ", "),
                                          "; tags: ", tags.empty() ? "none" : absl::StrJoin(tags, ", "),
                                          "; or a commit id or unique prefix of one)"));
}

absl::StatusOr<std::vector<TreeEntry>> Registry::Files(const CommitRecord& commit) {
  return metadata_->GetTree(commit.tree_id);
}

absl::StatusOr<std::vector<CommitRecord>> Registry::Log(const std::string& namespace_name, const std::string& name,
                                                        const std::string& revision, int limit) {
  absl::StatusOr<CommitRecord> commit = Resolve(namespace_name, name, revision);
  if (!commit.ok()) return commit.status();
  std::vector<CommitRecord> history{*commit};
  if (limit <= 0) limit = 100;
  while (static_cast<int>(history.size()) < limit && !history.back().parent_ids.empty()) {
    absl::StatusOr<CommitRecord> parent = metadata_->GetCommit(namespace_name, name, history.back().parent_ids.front());
    if (!parent.ok()) return parent.status();
    history.push_back(*std::move(parent));
  }
  return history;
}

absl::StatusOr<CommitRecord> Registry::CreateCommit(const std::string& namespace_name, const std::string& name,
                                                    const std::string& branch,
                                                    const std::optional<std::string>& expected_parent,
                                                    const std::string& author, const std::string& message,
                                                    std::vector<TreeEntry> files) {
  if (absl::Status status = ValidateRepository(namespace_name, name); !status.ok()) return status;
  const std::string branch_name = branch.empty() ? "main" : branch;
  if (absl::Status status = ValidateRefName(branch_name); !status.ok()) return status;
  const std::string where = absl::StrCat("commit to ", namespace_name, "/", name, "@", branch_name);
  for (const TreeEntry& file : files) {
    if (absl::Status status = ValidateRepositoryPath(file.path); !status.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": ", status.message()));
    }
    if (absl::Status status = ValidateSha256(file.sha256); !status.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": file ", file.path, ": ", status.message()));
    }
  }
  // Shared with other commits, exclusive against garbage collection (see the Note in registry.h);
  // across replicas the metadata store runs the check inside the commit's transaction, which
  // collection on any replica excludes (Note [Commits on PostgreSQL] in metadata_store.cc).
  std::shared_lock lock(garbage_mutex_);
  auto verify_blobs = [&]() -> absl::Status {
    for (const TreeEntry& file : files) {
      absl::StatusOr<int64_t> size = StoredSize(file.sha256);
      if (!size.ok()) {
        return absl::FailedPreconditionError(absl::StrCat(where, ": file ", file.path, ": blob ", file.sha256,
                                                          " is not in the registry; upload it before committing"));
      }
      if (*size != file.size) {
        return absl::InvalidArgumentError(absl::StrCat(where, ": file ", file.path, ": stated size ", file.size,
                                                       " but blob ", file.sha256, " has ", *size, " bytes"));
      }
    }
    return absl::OkStatus();
  };
  // Checked here too, so a bad tree is refused before any lock is taken.
  if (absl::Status status = verify_blobs(); !status.ok()) return status;
  absl::StatusOr<RepositoryRecord> repository = metadata_->GetRepository(namespace_name, name);
  if (!repository.ok()) return repository.status();
  if (repository->kind == kKernelKind) {
    absl::StatusOr<KernelManifest> manifest = ReadKernelManifest(files);
    if (!manifest.ok()) return absl::Status(manifest.status().code(), absl::StrCat(where, ": ", manifest.status().message()));
    if (absl::Status status = CheckKernelTree(*manifest, files); !status.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": ", status.message()));
    }
  }
  std::vector<TreeEntry> tree = files;  // `verify_blobs` reads `files`
  return metadata_->CommitToBranch(namespace_name, name, branch_name, expected_parent, author, message, absl::Now(),
                                   std::move(tree), verify_blobs);
}

absl::StatusOr<KernelManifest> Registry::ReadKernelManifest(const std::vector<TreeEntry>& files) {
  constexpr int64_t kMaxManifestBytes = 1 << 20;
  for (const TreeEntry& file : files) {
    if (file.path != kKernelManifestPath) continue;
    if (file.size > kMaxManifestBytes) {
      return absl::InvalidArgumentError(absl::StrCat(kKernelManifestPath, " is ", file.size, " bytes; the limit is ", kMaxManifestBytes));
    }
    std::string text;
    if (absl::Status read = ReadStored(file.sha256, 0, file.size, &text); !read.ok()) return read;
    return ParseKernelManifest(text);
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "a kernel repository's commit needs a ", kKernelManifestPath,
      " naming the kernel and its variants, e.g. {\"name\": \"rmsnorm\", \"variants\": {\"torch2.15-cpu-x86_64\": "
      "{\"library\": \"librmsnorm.so\"}}}"));
}

absl::StatusOr<RefRecord> Registry::CreateTag(const std::string& namespace_name, const std::string& name,
                                              const std::string& revision, const std::string& tag) {
  if (absl::Status status = ValidateRefName(tag); !status.ok()) return status;
  absl::StatusOr<CommitRecord> commit = Resolve(namespace_name, name, revision);
  if (!commit.ok()) return commit.status();
  if (absl::Status status = metadata_->CreateTag(namespace_name, name, tag, commit->commit_id); !status.ok()) {
    return status;
  }
  return RefRecord{tag, commit->commit_id, true};
}

std::vector<std::string> Registry::FindMissingBlobs(const std::vector<std::string>& digests) {
  std::vector<std::string> missing;
  std::set<std::string> seen;
  for (const std::string& digest : digests) {
    if (!seen.insert(digest).second) continue;
    if (!blobs_->Touch(digest).ok() && !xet_->FileSize(digest, /*touch=*/true).ok()) missing.push_back(digest);
  }
  return missing;
}

absl::StatusOr<int64_t> Registry::StoredSize(const std::string& sha256) {
  absl::StatusOr<int64_t> size = blobs_->Size(sha256);
  if (size.ok() || !absl::IsNotFound(size.status())) return size;
  absl::StatusOr<int64_t> chunked = xet_->FileSize(sha256);
  if (absl::IsNotFound(chunked.status())) return size;
  return chunked;
}

absl::Status Registry::ReadStored(const std::string& sha256, int64_t offset, int64_t length, std::string* output) {
  std::string buffer;
  absl::Status read = blobs_->Read(sha256, offset, length, &buffer);
  if (read.ok()) {
    output->append(buffer);
    return absl::OkStatus();
  }
  // Not a blob (or no longer: its Xet view replaced it): the file stored as chunks.
  if (!absl::IsNotFound(read)) return read;
  absl::StatusOr<std::unique_ptr<XetFileReader>> reader = xet_->OpenFile(sha256);
  if (!reader.ok()) return reader.status();
  return (*reader)->Read(offset, length, output);
}

absl::StatusOr<KernelVariant> Registry::FindKernelVariant(const std::string& namespace_name, const std::string& name,
                                                          const std::string& revision, const std::string& torch_version,
                                                          const std::string& accelerator,
                                                          const std::string& architecture,
                                                          const std::string& compute_capability) {
  absl::StatusOr<CommitRecord> commit = Resolve(namespace_name, name, revision);
  if (!commit.ok()) return commit.status();
  absl::StatusOr<std::vector<TreeEntry>> files = Files(*commit);
  if (!files.ok()) return files.status();
  absl::StatusOr<KernelManifest> manifest = ReadKernelManifest(*files);
  if (!manifest.ok()) return manifest.status();
  std::string version = torch_version;
  if (absl::StartsWith(version, "torch")) version = version.substr(5);
  const std::string wanted = absl::StrCat("torch", version, "-", accelerator, "-", architecture);
  const std::string where = absl::StrCat("kernel ", namespace_name, "/", name, "@", commit->commit_id.substr(0, 12));
  const KernelManifestVariant* variant = manifest->Find(wanted);
  if (variant == nullptr) {
    std::vector<std::string> names;
    for (const KernelManifestVariant& entry : manifest->variants) names.push_back(entry.name);
    return absl::NotFoundError(absl::StrCat(where, " has no variant ", wanted, " (variants: ", absl::StrJoin(names, ", "), ")"));
  }
  if (!compute_capability.empty() && !variant->cuda_capabilities.empty() &&
      std::find(variant->cuda_capabilities.begin(), variant->cuda_capabilities.end(), compute_capability) ==
          variant->cuda_capabilities.end()) {
    return absl::NotFoundError(absl::StrCat(where, ": variant ", wanted, " is built for compute capabilities ",
                                            absl::StrJoin(variant->cuda_capabilities, ", "), ", not ", compute_capability));
  }
  KernelVariant found{variant->name, {}, absl::StrCat("build/", variant->name, "/", variant->library), variant->entry_json};
  const std::string prefix = absl::StrCat("build/", variant->name, "/");
  for (const TreeEntry& file : *files) {
    if (absl::StartsWith(file.path, prefix)) found.files.push_back(file);
  }
  return found;
}

absl::StatusOr<GarbageReport> Registry::CollectGarbage(bool dry_run) {
  std::unique_lock lock(garbage_mutex_);
  GarbageReport report;
  if (!dry_run) {
    if (absl::Status status = metadata_->DeleteOrphanTrees(); !status.ok()) return status;
  }
  // The referenced set must stay true until the deletions are done: no commit may land in
  // between, on this replica (garbage_mutex_) or any other (WithCommitsPaused).
  auto collect = [&]() -> absl::Status {
    report.kept_blobs = report.deleted_blobs = report.freed_bytes = 0;  // a retried transaction reruns this
    absl::StatusOr<std::set<std::string>> referenced = metadata_->ReferencedBlobs();
    if (!referenced.ok()) return referenced.status();
    const std::set<std::string> uploading = blobs_->UploadsInProgress();
    const absl::Time cutoff = absl::Now() - options_.garbage_grace_period;
    std::vector<BlobInfo> doomed;
    absl::Status listed = blobs_->ForEachBlob([&](const BlobInfo& blob) {
      if (referenced->count(blob.sha256) || uploading.count(blob.sha256) || blob.modified > cutoff) {
        ++report.kept_blobs;
      } else {
        doomed.push_back(blob);
      }
    });
    if (!listed.ok()) return listed;
    for (const BlobInfo& blob : doomed) {
      if (!dry_run) {
        if (absl::Status status = blobs_->Delete(blob.sha256); !status.ok()) return status;
        stored_bytes_ -= blob.size;
      }
      ++report.deleted_blobs;
      report.freed_bytes += blob.size;
    }
    // Xet files whose blob no commit names, and the xorbs no remaining file uses (Note [Xet garbage
    // collection] in xet_store.h).
    absl::StatusOr<XetGarbageReport> xet_report = xet_->CollectGarbage(*referenced, cutoff, dry_run);
    if (!xet_report.ok()) return xet_report.status();
    report.xet = *xet_report;
    return absl::OkStatus();
  };
  absl::Status collected = dry_run ? collect() : metadata_->WithCommitsPaused(collect);
  if (!collected.ok()) return collected;
  if (!dry_run) {
    // Stale partial uploads go too (a fresh store open also removes them).
    auto reopened = LocalBlobStore::Open(options_.data_directory, options_.stale_partial_age);
    if (reopened.ok()) report.deleted_partials = (*reopened)->removed_stale_partials();
    // And staged uploads a killed replica left in a shared bucket (Note [Staged S3 uploads]).
    absl::StatusOr<int64_t> staged = blobs_->DeleteStaleStaging(options_.stale_partial_age);
    if (!staged.ok()) return staged.status();
    report.deleted_partials += *staged;
  }
  return report;
}

double Registry::DedupRatio() {
  absl::StatusOr<int64_t> logical = metadata_->LogicalBytes();
  int64_t stored = stored_bytes();
  if (!logical.ok() || stored <= 0) return 1.0;
  return static_cast<double>(*logical) / static_cast<double>(stored);
}

}  // namespace flotilla::registry
