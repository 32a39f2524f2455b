#include "services/registry/registry_service.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <memory>
#include <vector>

#include <absl/strings/match.h>
#include <absl/strings/str_cat.h>

#include "flotilla/v1/registry.grpc.pb.h"
#include "services/common/logging.h"
#include "services/common/status.h"
#include "services/registry/names.h"
#include "services/registry/registry_metrics.h"

namespace flotilla::registry {
namespace {

using namespace flotilla::v1;


std::string AuthorizationOf(const grpc::CallbackServerContext* context) {
  const auto& metadata = context->client_metadata();
  auto found = metadata.find("authorization");
  if (found == metadata.end()) return "";
  return std::string(found->second.data(), found->second.size());
}

void ToProto(const RepositoryRecord& record, Repository* repository) {
  repository->set_namespace_(record.namespace_name);
  repository->set_name(record.name);
  repository->set_kind(static_cast<RepositoryKind>(record.kind));
  repository->set_default_branch(record.default_branch);
  repository->set_created_unix_seconds(record.created_unix_seconds);
  repository->set_head_commit(record.head_commit);
}

void ToProto(const CommitRecord& record, Commit* commit) {
  commit->set_commit_id(record.commit_id);
  for (const std::string& parent : record.parent_ids) commit->add_parent_ids(parent);
  commit->set_author(record.author);
  commit->set_message(record.message);
  commit->set_created_unix_seconds(record.created_unix_seconds);
  commit->set_tree_id(record.tree_id);
}

void ToProto(const TreeEntry& entry, FileEntry* file) {
  file->set_path(entry.path);
  file->set_size(entry.size);
  file->set_sha256(entry.sha256);
}

// DownloadFile is a raw method (ByteBuffer in and out): its responses are encoded by hand so the
// file bytes go out as slices of a mapping of the blob, with no copy in user space (see
// DownloadReactor). Every other method is a plain callback method.
class RegistryGrpcService final : public RegistryService::WithRawCallbackMethod_DownloadFile<RegistryService::CallbackService> {
 public:
  RegistryGrpcService(Registry& registry, const Authorizer& authorizer) : registry_(registry), authorizer_(authorizer) {}

  // Runs `body` (returning absl::Status) and finishes the unary call with its status.
  template <typename Body>
  grpc::ServerUnaryReactor* Unary(grpc::CallbackServerContext* context, Body body) {
    absl::Status status = body();
    if (!status.ok()) Metrics().CountError("grpc", status);
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    reactor->Finish(ToGrpcStatus(status));
    return reactor;
  }

  absl::StatusOr<std::string> Authorize(const grpc::CallbackServerContext* context, const std::string& namespace_name,
                                        Scope scope) {
    return authorizer_.Check(AuthorizationOf(context), namespace_name, scope);
  }

  grpc::ServerUnaryReactor* CreateRepository(grpc::CallbackServerContext* context, const CreateRepositoryRequest* request,
                                             Repository* response) override {
    return Unary(context, [&]() -> absl::Status {
      if (auto who = Authorize(context, request->namespace_(), Scope::kWrite); !who.ok()) return who.status();
      auto record = registry_.CreateRepository(request->namespace_(), request->name(), request->kind(), request->exist_ok());
      if (!record.ok()) return record.status();
      ToProto(*record, response);
      return absl::OkStatus();
    });
  }

  grpc::ServerUnaryReactor* GetRepository(grpc::CallbackServerContext* context, const GetRepositoryRequest* request,
                                          Repository* response) override {
    return Unary(context, [&]() -> absl::Status {
      if (auto who = Authorize(context, request->namespace_(), Scope::kRead); !who.ok()) return who.status();
      auto record = registry_.GetRepository(request->namespace_(), request->name());
      if (!record.ok()) return record.status();
      ToProto(*record, response);
      return absl::OkStatus();
    });
  }

  grpc::ServerUnaryReactor* ListRepositories(grpc::CallbackServerContext* context, const ListRepositoriesRequest* request,
                                             ListRepositoriesResponse* response) override {
    return Unary(context, [&]() -> absl::Status {
      if (auto who = Authorize(context, "", Scope::kRead); !who.ok()) return who.status();
      int page_size = request->page_size() <= 0 ? 100 : std::min(request->page_size(), 1000);
      auto records = registry_.metadata().ListRepositories(request->name_filter(), request->kind(), page_size,
                                                           request->page_token());
      if (!records.ok()) return records.status();
      for (const RepositoryRecord& record : *records) ToProto(record, response->add_repositories());
      if (static_cast<int>(records->size()) == page_size) {
        response->set_next_page_token(absl::StrCat(records->back().namespace_name, "/", records->back().name));
      }
      return absl::OkStatus();
    });
  }

  grpc::ServerUnaryReactor* DeleteRepository(grpc::CallbackServerContext* context, const DeleteRepositoryRequest* request,
                                             DeleteRepositoryResponse*) override {
    return Unary(context, [&]() -> absl::Status {
      if (auto who = Authorize(context, request->namespace_(), Scope::kWrite); !who.ok()) return who.status();
      absl::Status status = registry_.DeleteRepository(request->namespace_(), request->name());
      if (status.ok()) LogInfo("repository deleted", {{"repository", request->namespace_() + "/" + request->name()}});
      return status;
    });
  }

  absl::StatusOr<CommitRecord> ResolveReference(grpc::CallbackServerContext* context, const ModelReference& reference) {
    if (auto who = Authorize(context, reference.namespace_(), Scope::kRead); !who.ok()) return who.status();
    return registry_.Resolve(reference.namespace_(), reference.name(), reference.revision());
  }

  grpc::ServerUnaryReactor* ResolveRevision(grpc::CallbackServerContext* context, const ResolveRevisionRequest* request,
                                            ResolveRevisionResponse* response) override {
    return Unary(context, [&]() -> absl::Status {
      auto commit = ResolveReference(context, request->reference());
      if (!commit.ok()) return commit.status();
      response->set_commit_id(commit->commit_id);
      return absl::OkStatus();
    });
  }

  grpc::ServerUnaryReactor* ListFiles(grpc::CallbackServerContext* context, const ListFilesRequest* request,
                                      ListFilesResponse* response) override {
    return Unary(context, [&]() -> absl::Status {
      auto commit = ResolveReference(context, request->reference());
      if (!commit.ok()) return commit.status();
      auto files = registry_.Files(*commit);
      if (!files.ok()) return files.status();
      std::string prefix = request->path_prefix();
      if (!prefix.empty() && prefix.back() != '/') prefix.push_back('/');
      response->set_commit_id(commit->commit_id);
      for (const TreeEntry& entry : *files) {
        if (absl::StartsWith(entry.path, prefix)) ToProto(entry, response->add_files());
      }
      return absl::OkStatus();
    });
  }

  grpc::ServerUnaryReactor* ListCommits(grpc::CallbackServerContext* context, const ListCommitsRequest* request,
                                        ListCommitsResponse* response) override {
    return Unary(context, [&]() -> absl::Status {
      const ModelReference& reference = request->reference();
      if (auto who = Authorize(context, reference.namespace_(), Scope::kRead); !who.ok()) return who.status();
      auto history = registry_.Log(reference.namespace_(), reference.name(), reference.revision(), request->limit());
      if (!history.ok()) return history.status();
      for (const CommitRecord& commit : *history) ToProto(commit, response->add_commits());
      return absl::OkStatus();
    });
  }

  grpc::ServerUnaryReactor* ListRefs(grpc::CallbackServerContext* context, const ListRefsRequest* request,
                                     ListRefsResponse* response) override {
    return Unary(context, [&]() -> absl::Status {
      if (auto who = Authorize(context, request->namespace_(), Scope::kRead); !who.ok()) return who.status();
      if (auto repository = registry_.GetRepository(request->namespace_(), request->name()); !repository.ok()) {
        return repository.status();
      }
      auto refs = registry_.metadata().ListRefs(request->namespace_(), request->name());
      if (!refs.ok()) return refs.status();
      for (const RefRecord& ref : *refs) {
        Ref* out = ref.is_tag ? response->add_tags() : response->add_branches();
        out->set_name(ref.name);
        out->set_commit_id(ref.commit_id);
        out->set_is_tag(ref.is_tag);
      }
      return absl::OkStatus();
    });
  }

  grpc::ServerUnaryReactor* CreateTag(grpc::CallbackServerContext* context, const CreateTagRequest* request,
                                      Ref* response) override {
    return Unary(context, [&]() -> absl::Status {
      const ModelReference& reference = request->reference();
      if (auto who = Authorize(context, reference.namespace_(), Scope::kWrite); !who.ok()) return who.status();
      auto ref = registry_.CreateTag(reference.namespace_(), reference.name(), reference.revision(), request->tag());
      if (!ref.ok()) return ref.status();
      response->set_name(ref->name);
      response->set_commit_id(ref->commit_id);
      response->set_is_tag(true);
      return absl::OkStatus();
    });
  }

  grpc::ServerUnaryReactor* DeleteTag(grpc::CallbackServerContext* context, const DeleteTagRequest* request,
                                      DeleteTagResponse*) override {
    return Unary(context, [&]() -> absl::Status {
      if (auto who = Authorize(context, request->namespace_(), Scope::kWrite); !who.ok()) return who.status();
      if (auto repository = registry_.GetRepository(request->namespace_(), request->name()); !repository.ok()) {
        return repository.status();
      }
      return registry_.metadata().DeleteTag(request->namespace_(), request->name(), request->tag());
    });
  }

  // The checks every push step makes: write scope, and the repository exists.
  absl::StatusOr<std::string> AuthorizePush(grpc::CallbackServerContext* context, const std::string& namespace_name,
                                            const std::string& name) {
    auto who = Authorize(context, namespace_name, Scope::kWrite);
    if (!who.ok()) return who.status();
    if (auto repository = registry_.GetRepository(namespace_name, name); !repository.ok()) {
      return repository.status();
    }
    return who;
  }

  grpc::ServerUnaryReactor* FindMissingBlobs(grpc::CallbackServerContext* context, const FindMissingBlobsRequest* request,
                                             FindMissingBlobsResponse* response) override {
    return Unary(context, [&]() -> absl::Status {
      if (auto who = AuthorizePush(context, request->namespace_(), request->name()); !who.ok()) return who.status();
      for (const std::string& digest : request->sha256()) {
        if (absl::Status status = ValidateSha256(digest); !status.ok()) return status;
      }
      for (const std::string& upload_id : request->upload_id()) {
        if (absl::Status status = ValidateUploadId(upload_id); !status.ok()) return status;
      }
      std::vector<std::string> digests(request->sha256().begin(), request->sha256().end());
      for (const std::string& missing : registry_.FindMissingBlobs(digests)) {
        response->add_missing_sha256(missing);
        if (int64_t held = registry_.blobs().PartialSize(missing); held > 0) {
          PartialUpload* partial = response->add_partial_uploads();
          partial->set_sha256(missing);
          partial->set_committed_size(held);
        }
      }
      for (const std::string& upload_id : request->upload_id()) {
        const std::string key = StreamedUploadKey(request->namespace_(), request->name(), upload_id);
        if (int64_t held = registry_.blobs().PartialSize(key); held > 0) {
          PartialUpload* partial = response->add_partial_uploads();
          partial->set_upload_id(upload_id);
          partial->set_committed_size(held);
        }
      }
      return absl::OkStatus();
    });
  }

  grpc::ServerReadReactor<UploadBlobRequest>* UploadBlob(grpc::CallbackServerContext* context,
                                                         UploadBlobResponse* response) override;

  // Chunk-level dedup for pushes: see xet_store.h.
  static absl::StatusOr<std::vector<XetHash>> ChunkHashes(const google::protobuf::RepeatedPtrField<std::string>& raw) {
    std::vector<XetHash> hashes;
    hashes.reserve(raw.size());
    for (int index = 0; index < raw.size(); ++index) {
      if (raw[index].size() != 32) {
        return absl::InvalidArgumentError(absl::StrCat("chunk_hash[", index, "]: expected 32 bytes, got ", raw[index].size()));
      }
      XetHash hash;
      std::memcpy(hash.data(), raw[index].data(), 32);
      hashes.push_back(hash);
    }
    return hashes;
  }

  // Note [Same-size candidates]: a file pushed to a path its repository never had is probed by its
  // first chunks (Note [Chunked push] in registry_client.cc), but a file that arrived as a plain
  // blob (a streamed `flotilla push`, an LFS upload) has no chunk index until something asks for
  // its Xet view, so a fine-tuned checkpoint pushed into a new repository found none of its base's
  // chunks and was sent, and stored, whole. A fine-tune keeps its base's architecture and dtype,
  // hence its safetensors file's exact size: the probe names the size, and the two most recently
  // committed files of exactly that size that are still plain blobs get their Xet view first (a
  // one-time cost per blob, which the next hf_xet download would pay anyway). Sizes under 8 MiB
  // are left alone: whole-file dedup covers them at little cost.
  static constexpr int64_t kSameSizeCandidateMinimumBytes = 8 << 20;
  void IndexSameSizeCandidates(int64_t size) {
    absl::StatusOr<std::vector<std::string>> candidates = registry_.metadata().BlobsOfSize(size, 2);
    if (!candidates.ok()) return;  // the probe still answers; only the dedup is lost
    for (const std::string& sha256 : *candidates) {
      if (!registry_.blobs().Size(sha256).ok()) continue;  // stored as chunks already, or collected
      registry_.xet().FileHashForBlob(sha256, size).IgnoreError();
    }
  }

  grpc::ServerUnaryReactor* FindMissingChunks(grpc::CallbackServerContext* context, const FindMissingChunksRequest* request,
                                              FindMissingChunksResponse* response) override {
    return Unary(context, [&]() -> absl::Status {
      if (auto who = AuthorizePush(context, request->namespace_(), request->name()); !who.ok()) return who.status();
      absl::StatusOr<std::vector<XetHash>> hashes = ChunkHashes(request->chunk_hash());
      if (!hashes.ok()) return hashes.status();
      for (const std::string& previous : request->based_on_sha256()) {
        if (absl::Status status = ValidateSha256(previous); !status.ok()) return status;
        absl::StatusOr<int64_t> size = registry_.blobs().Size(previous);
        if (!size.ok()) continue;  // never stored, or collected: nothing to index
        if (auto indexed = registry_.xet().FileHashForBlob(previous, *size); !indexed.ok()) return indexed.status();
      }
      if (request->file_size() >= kSameSizeCandidateMinimumBytes) IndexSameSizeCandidates(request->file_size());
      for (size_t index : registry_.xet().MissingChunks(*hashes)) response->add_missing_index(static_cast<uint32_t>(index));
      return absl::OkStatus();
    });
  }

  grpc::ServerUnaryReactor* UploadXorb(grpc::CallbackServerContext* context, const UploadXorbRequest* request,
                                       UploadXorbResponse* response) override {
    return Unary(context, [&]() -> absl::Status {
      if (auto who = AuthorizePush(context, request->namespace_(), request->name()); !who.ok()) return who.status();
      if (request->xorb_hash().size() != 32) {
        return absl::InvalidArgumentError(absl::StrCat("upload xorb: xorb_hash must be 32 bytes, got ",
                                                       request->xorb_hash().size()));
      }
      XetHash hash;
      std::memcpy(hash.data(), request->xorb_hash().data(), 32);
      absl::StatusOr<bool> inserted = registry_.xet().PutXorb(hash, request->data());
      if (!inserted.ok()) return inserted.status();
      Metrics().bytes_received.Add({{"api", "grpc"}}).Increment(static_cast<double>(request->data().size()));
      response->set_inserted(*inserted);
      return absl::OkStatus();
    });
  }

  grpc::ServerUnaryReactor* CreateBlobFromChunks(grpc::CallbackServerContext* context,
                                                 const CreateBlobFromChunksRequest* request,
                                                 CreateBlobFromChunksResponse*) override {
    return Unary(context, [&]() -> absl::Status {
      if (auto who = AuthorizePush(context, request->namespace_(), request->name()); !who.ok()) return who.status();
      if (absl::Status status = ValidateSha256(request->sha256()); !status.ok()) return status;
      absl::StatusOr<std::vector<XetHash>> hashes = ChunkHashes(request->chunk_hash());
      if (!hashes.ok()) return hashes.status();
      return registry_.xet().CreateBlobFromChunks(request->sha256(), request->size(), *hashes);
    });
  }

  grpc::ServerUnaryReactor* CreateCommit(grpc::CallbackServerContext* context, const CreateCommitRequest* request,
                                         Commit* response) override {
    return Unary(context, [&]() -> absl::Status {
      auto who = AuthorizePush(context, request->namespace_(), request->name());
      if (!who.ok()) return who.status();
      std::vector<TreeEntry> files;
      files.reserve(request->files_size());
      for (const FileEntry& file : request->files()) files.push_back({file.path(), file.size(), file.sha256()});
      std::optional<std::string> expected;
      if (request->has_expected_parent()) expected = request->expected_parent();
      auto commit = registry_.CreateCommit(request->namespace_(), request->name(), request->branch(), expected, *who,
                                           request->message(), std::move(files));
      if (!commit.ok()) return commit.status();
      ToProto(*commit, response);
      Metrics().pushes.Add({{"api", "grpc"}}).Increment();
      UpdateStorageGauges(registry_);
      LogInfo("commit created", {{"repository", request->namespace_() + "/" + request->name()},
                                 {"branch", request->branch().empty() ? "main" : request->branch()},
                                 {"commit", commit->commit_id}, {"files", request->files_size()}, {"author", *who}});
      return absl::OkStatus();
    });
  }

  grpc::ServerWriteReactor<grpc::ByteBuffer>* DownloadFile(grpc::CallbackServerContext* context,
                                                           const grpc::ByteBuffer* request) override;

  grpc::ServerUnaryReactor* FindKernelVariant(grpc::CallbackServerContext* context, const FindKernelVariantRequest* request,
                                              FindKernelVariantResponse* response) override {
    return Unary(context, [&]() -> absl::Status {
      const ModelReference& reference = request->reference();
      auto commit = ResolveReference(context, reference);
      if (!commit.ok()) return commit.status();
      auto variant = registry_.FindKernelVariant(reference.namespace_(), reference.name(), commit->commit_id,
                                                 request->torch_version(), request->accelerator(), request->architecture(),
                                                 request->compute_capability());
      if (!variant.ok()) return variant.status();
      response->set_variant(variant->variant);
      response->set_library(variant->library);
      response->set_manifest_entry_json(variant->entry_json);
      response->set_commit_id(commit->commit_id);
      for (const TreeEntry& entry : variant->files) ToProto(entry, response->add_files());
      return absl::OkStatus();
    });
  }

  grpc::ServerUnaryReactor* CollectGarbage(grpc::CallbackServerContext* context, const CollectGarbageRequest* request,
                                           CollectGarbageResponse* response) override {
    return Unary(context, [&]() -> absl::Status {
      if (auto who = Authorize(context, "", Scope::kWrite); !who.ok()) return who.status();
      auto report = registry_.CollectGarbage(request->dry_run());
      if (!report.ok()) return report.status();
      response->set_deleted_blobs(report->deleted_blobs);
      response->set_freed_bytes(report->freed_bytes);
      response->set_kept_blobs(report->kept_blobs);
      response->set_deleted_partials(report->deleted_partials);
      UpdateStorageGauges(registry_);
      LogInfo("garbage collected", {{"dry_run", request->dry_run()}, {"deleted_blobs", report->deleted_blobs},
                                    {"freed_bytes", report->freed_bytes}, {"kept_blobs", report->kept_blobs}});
      return absl::OkStatus();
    });
  }

  Registry& registry_;
  const Authorizer& authorizer_;
};

// Client-streaming upload: the first message names the blob, every message may carry data. Ends
// with the bytes held; a stream that ends early keeps its bytes (fsynced) for resume. A streamed
// upload (no sha256 in the first message, an upload_id instead) is held under its
// StreamedUploadKey and named by the sha256 of a message after its last byte (Note [Streamed push]
// in registry_client.cc); the bytes are hashed as they arrive, so checking that digest at the end
// costs nothing more than the blob's own check.
class UploadReactor final : public grpc::ServerReadReactor<UploadBlobRequest> {
 public:
  UploadReactor(RegistryGrpcService& service, grpc::CallbackServerContext* context, UploadBlobResponse* response)
      : service_(service), context_(context), response_(response),
        bytes_counter_(Metrics().bytes_received.Add({{"api", "grpc"}})) {
    StartRead(&request_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) return End();
    const bool first = !upload_ && !done_;
    if (first) {
      if (absl::Status status = Begin(); !status.ok()) return Fail(status);
      // Stored already (another push won the race): answer now, the rest of the stream is moot.
      if (done_) return End();
    } else if (streamed_ && !request_.sha256().empty()) {
      if (absl::Status status = NameDigest(request_.sha256()); !status.ok()) return Fail(status);
    }
    if (!request_.data().empty()) {
      if (!final_sha256_.empty()) {
        return Fail(absl::InvalidArgumentError(absl::StrCat("upload ", upload_id_, ": data after the digest (sha256 ",
                                                            final_sha256_, ") was named; the digest comes last")));
      }
      if (absl::Status status = upload_->Append(request_.data()); !status.ok()) return Fail(status);
      bytes_counter_.Increment(static_cast<double>(request_.data().size()));
    }
    request_.Clear();
    StartRead(&request_);
  }

  void OnDone() override { delete this; }

 private:
  absl::Status Begin() {
    size_ = request_.size();
    if (auto who = service_.AuthorizePush(context_, request_.namespace_(), request_.name()); !who.ok()) {
      return who.status();
    }
    if (request_.sha256().empty() && !request_.upload_id().empty()) {
      if (absl::Status status = ValidateUploadId(request_.upload_id()); !status.ok()) return status;
      streamed_ = true;
      upload_id_ = request_.upload_id();
      sha256_ = StreamedUploadKey(request_.namespace_(), request_.name(), upload_id_);
      auto upload = service_.registry_.blobs().BeginUpload(sha256_, size_, request_.offset());
      if (!upload.ok()) {
        return absl::Status(upload.status().code(), absl::StrCat("upload ", upload_id_, ": ", upload.status().message()));
      }
      upload_ = *std::move(upload);
      return absl::OkStatus();
    }
    sha256_ = request_.sha256();
    if (absl::Status status = ValidateSha256(sha256_); !status.ok()) return status;
    auto upload = service_.registry_.blobs().BeginUpload(sha256_, size_, request_.offset());
    if (absl::IsAlreadyExists(upload.status())) {
      // Deduplicated: the registry has these bytes already. Further data is refused.
      auto stored = service_.registry_.blobs().Size(sha256_);
      if (stored.ok() && *stored != size_) {
        return absl::InvalidArgumentError(absl::StrCat("upload of blob ", sha256_, ": announced size ", size_,
                                                       " but the stored blob has ", *stored, " bytes"));
      }
      final_sha256_ = sha256_;
      done_ = true;
      return absl::OkStatus();
    }
    if (!upload.ok()) return upload.status();
    upload_ = *std::move(upload);
    return absl::OkStatus();
  }

  // The streamed upload's digest, which may come only once every byte is in.
  absl::Status NameDigest(const std::string& sha256) {
    if (absl::Status status = ValidateSha256(sha256); !status.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("upload ", upload_id_, ": the final message's ", status.message()));
    }
    if (!final_sha256_.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("upload ", upload_id_, ": the digest was named twice (", final_sha256_,
                                                     ", then ", sha256, ")"));
    }
    if (!request_.data().empty() || upload_->committed_size() != size_) {
      return absl::InvalidArgumentError(absl::StrCat(
          "upload ", upload_id_, ": sha256 named with ", upload_->committed_size(), " of ", size_,
          " bytes received", request_.data().empty() ? "" : " and more data in the same message",
          "; it goes in a message of its own after the last byte (resume from offset ", upload_->committed_size(), ")"));
    }
    final_sha256_ = sha256;
    return absl::OkStatus();
  }

  void End() {
    if (done_) {
      response_->set_committed_size(size_);
      response_->set_complete(true);
      response_->set_sha256(final_sha256_);
      return Finish(grpc::Status::OK);
    }
    if (!upload_) return Fail(absl::InvalidArgumentError("UploadBlob: the stream carried no message"));
    if (upload_->committed_size() < size_ || (streamed_ && final_sha256_.empty())) {
      // Ended early (the client stops, or its stream broke), or a streamed upload's digest never
      // came: keep the bytes for resume.
      if (absl::Status status = upload_->Sync(); !status.ok()) return Fail(status);
      response_->set_committed_size(upload_->committed_size());
      response_->set_complete(false);
      upload_.reset();
      return Finish(grpc::Status::OK);
    }
    absl::Status finished = streamed_ ? upload_->FinishAs(final_sha256_) : upload_->Finish();
    upload_.reset();
    if (!finished.ok()) return Fail(finished);
    service_.registry_.BlobStored(size_);
    response_->set_committed_size(size_);
    response_->set_complete(true);
    response_->set_sha256(streamed_ ? final_sha256_ : sha256_);
    Finish(grpc::Status::OK);
  }

  void Fail(const absl::Status& status) {
    Metrics().CountError("grpc", status);
    if (upload_ && !absl::IsDataLoss(status)) upload_->Sync().IgnoreError();
    upload_.reset();
    Finish(ToGrpcStatus(status));
  }

  RegistryGrpcService& service_;
  grpc::CallbackServerContext* context_;
  UploadBlobResponse* response_;
  prometheus::Counter& bytes_counter_;
  UploadBlobRequest request_;
  std::unique_ptr<BlobUpload> upload_;
  std::string sha256_;        // the blob's digest, or a streamed upload's StreamedUploadKey
  bool streamed_ = false;     // the digest comes last
  std::string upload_id_;     // a streamed upload's id
  std::string final_sha256_;  // the digest a streamed upload named (or the stored blob's)
  int64_t size_ = 0;
  bool done_ = false;  // the blob was stored before this call: nothing to write
};

grpc::ServerReadReactor<UploadBlobRequest>* RegistryGrpcService::UploadBlob(grpc::CallbackServerContext* context,
                                                                          UploadBlobResponse* response) {
  return new UploadReactor(*this, context, response);
}

// Note [Download messages]: DownloadFile sends 512 KiB per message, cut from 8 MiB read-only
// mappings of the blob. The client writes and hashes a message as soon as it has arrived whole, so
// a small message is still in the CPU's caches when it is written and hashed. While the client
// wrote through the page cache, a 1 MiB message had mostly left them by then, and on a busy
// machine the client spent about twice the CPU per GiB (pulls of 512 MiB, 6 rounds interleaved,
// three runs: client CPU medians 1.88, 2.47, 3.48 s/GiB with 1 MiB messages against 0.97, 1.17,
// 1.15 with 128 KiB; the registry's 0.36 against 0.57), so messages were 128 KiB. Since the client
// gathers the bytes into its direct-write buffer (Note [Direct pull writes] in registry_client.cc)
// that cost is gone: 1 GiB pulls with 512 KiB against 128 KiB messages, two runs of 6 interleaved
// rounds (2026-12-07, load 1.7-2.8): registry CPU 0.35-0.55 against 0.52-0.70 s/GiB, client CPU
// 0.82-1.04 against 0.90-1.08, wall-time ratio medians 1.02x and 1.09x. Smaller messages cost the
// registry more per GiB (64 KiB: 0.79 s, and no gain for the client). The slices of one mapping share it: mapping 8 MiB at a time keeps mmap
// and munmap out of the per-message cost, and unmapping each window once gRPC has released its
// last slice keeps the process's resident memory near the bytes in flight (a mapping of the whole
// blob would count every page sent in its RSS). Blobs are immutable and garbage collection only
// unlinks them, so a window stays valid until it is unmapped.
constexpr int64_t kDownloadMessageBytes = 512 << 10;
constexpr int64_t kDownloadWindowBytes = 8 << 20;

// A read-only mapping of part of a blob file, shared by the slices cut from it and by its
// DownloadReactor; unmapped when the last of them lets go. Thread-safe reference count (gRPC
// releases slices on its own threads).
class MappedWindow {
 public:
  // Maps the pages holding [offset, offset + length).
  static absl::StatusOr<MappedWindow*> Map(int descriptor, int64_t offset, int64_t length) {
    static const int64_t page = sysconf(_SC_PAGESIZE);
    const int64_t start = offset - offset % page;
    const size_t window_length = static_cast<size_t>(offset + length - start);
    void* address = mmap(nullptr, window_length, PROT_READ, MAP_SHARED, descriptor, start);
    if (address == MAP_FAILED) return absl::InternalError(absl::StrCat("mmap: ", std::strerror(errno)));
    madvise(address, window_length, MADV_SEQUENTIAL);
    return new MappedWindow(address, window_length, start);
  }

  int64_t end() const { return start_ + static_cast<int64_t>(length_); }

  // [offset, offset + length), which must lie inside the window, as a slice holding a reference.
  grpc::Slice Slice(int64_t offset, int64_t length) {
    references_.fetch_add(1, std::memory_order_relaxed);
    return grpc::Slice(static_cast<char*>(address_) + (offset - start_), static_cast<size_t>(length),
                       [](void* window) { static_cast<MappedWindow*>(window)->Release(); }, this);
  }

  void Release() {
    if (references_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      munmap(address_, length_);
      delete this;
    }
  }

 private:
  MappedWindow(void* address, size_t length, int64_t start) : address_(address), length_(length), start_(start) {}

  void* const address_;
  const size_t length_;
  const int64_t start_;  // the file offset of address_
  std::atomic<int> references_{1};
};

// Server-streaming download of one file, 512 KiB per message (Note [Download messages]), from an offset. Each message is the
// DownloadFileResponse wire format written by hand: the first one's entry and commit_id
// (serialized by protobuf), then field 3 (data) as a tag, a length and a slice of the mapped blob.
class DownloadReactor final : public grpc::ServerWriteReactor<grpc::ByteBuffer> {
 public:
  DownloadReactor(RegistryGrpcService& service, grpc::CallbackServerContext* context, const grpc::ByteBuffer* request)
      : service_(service), bytes_counter_(Metrics().bytes_sent.Add({{"api", "grpc"}})) {
    absl::Status status = Start(context, request);
    if (!status.ok()) {
      Metrics().CountError("grpc", status);
      Finish(ToGrpcStatus(status));
      return;
    }
    Metrics().pulls.Add({{"api", "grpc"}}).Increment();
    WriteNext();
  }

  void OnWriteDone(bool ok) override {
    if (!ok) return Finish(grpc::Status(grpc::StatusCode::CANCELLED, "DownloadFile: the client went away"));
    WriteNext();
  }
  void OnDone() override { delete this; }
  ~DownloadReactor() override {
    if (window_ != nullptr) window_->Release();
    if (descriptor_ >= 0) close(descriptor_);
  }

 private:
  absl::Status Start(grpc::CallbackServerContext* context, const grpc::ByteBuffer* raw_request) {
    DownloadFileRequest parsed;
    std::vector<grpc::Slice> slices;
    if (!raw_request->Dump(&slices).ok()) return absl::InvalidArgumentError("DownloadFile: unreadable request");
    std::string bytes;
    for (const grpc::Slice& slice : slices) bytes.append(reinterpret_cast<const char*>(slice.begin()), slice.size());
    if (!parsed.ParseFromString(bytes)) {
      return absl::InvalidArgumentError("DownloadFile: the request is not a DownloadFileRequest");
    }
    const DownloadFileRequest* request = &parsed;
    auto commit = service_.ResolveReference(context, request->reference());
    if (!commit.ok()) return commit.status();
    auto files = service_.registry_.Files(*commit);
    if (!files.ok()) return files.status();
    const ModelReference& reference = request->reference();
    auto found = std::find_if(files->begin(), files->end(), [&](const TreeEntry& e) { return e.path == request->path(); });
    if (found == files->end()) {
      return absl::NotFoundError(absl::StrCat("file '", request->path(), "' not found in ", reference.namespace_(), "/",
                                              reference.name(), "@", commit->commit_id));
    }
    entry_ = *found;
    if (request->offset() < 0 || request->offset() > entry_.size) {
      return absl::OutOfRangeError(absl::StrCat("download of ", entry_.path, ": offset ", request->offset(),
                                                " is outside the file's ", entry_.size, " bytes"));
    }
    offset_ = request->offset();
    if (request->length() < 0) {
      return absl::InvalidArgumentError(absl::StrCat("download of ", entry_.path, ": length ", request->length(),
                                                     " is negative"));
    }
    end_ = request->length() == 0 ? entry_.size : std::min(entry_.size, offset_ + request->length());
    descriptor_ = open(service_.registry_.blobs().LocalPath(entry_.sha256).c_str(), O_RDONLY | O_CLOEXEC);
    if (descriptor_ < 0) {
      // Stored as Xet chunks (Note [One store, two views] in xet_store.h): read through a reconstruction.
      absl::StatusOr<std::unique_ptr<XetFileReader>> reader = service_.registry_.xet().OpenFile(entry_.sha256);
      if (absl::IsNotFound(reader.status())) {
        return absl::DataLossError(absl::StrCat("download of ", entry_.path, ": blob ", entry_.sha256, " is missing"));
      }
      if (!reader.ok()) {
        return absl::Status(reader.status().code(),
                            absl::StrCat("download of ", entry_.path, ": ", reader.status().message()));
      }
      if ((*reader)->size() != entry_.size) {
        return absl::DataLossError(absl::StrCat("download of ", entry_.path, ": file ", entry_.sha256, " holds ",
                                                (*reader)->size(), " bytes, expected ", entry_.size));
      }
      chunked_ = *std::move(reader);
      return WriteHeader(*commit);
    }
    // A short blob would fault (SIGBUS) when a window past its end is read: refuse it here.
    struct stat status;
    if (fstat(descriptor_, &status) != 0 || status.st_size < entry_.size) {
      return absl::DataLossError(absl::StrCat("download of ", entry_.path, ": blob ", entry_.sha256, " holds ",
                                              status.st_size, " bytes, expected ", entry_.size));
    }
    posix_fadvise(descriptor_, offset_, 0, POSIX_FADV_SEQUENTIAL);
    return WriteHeader(*commit);
  }

  absl::Status WriteHeader(const CommitRecord& commit) {
    DownloadFileResponse header;
    ToProto(entry_, header.mutable_entry());
    header.set_commit_id(commit.commit_id);
    header_ = header.SerializeAsString();
    return absl::OkStatus();
  }

  void WriteNext() {
    if (sent_header_ && offset_ >= end_) return Finish(grpc::Status::OK);
    const int64_t length = std::min(kDownloadMessageBytes, end_ - offset_);
    // Field 3 (bytes), wire type 2: tag, varint length, then the bytes.
    std::string prefix = sent_header_ ? std::string() : std::move(header_);
    prefix.push_back(static_cast<char>((3 << 3) | 2));
    for (uint64_t value = static_cast<uint64_t>(length);; value >>= 7) {
      if (value < 0x80) {
        prefix.push_back(static_cast<char>(value));
        break;
      }
      prefix.push_back(static_cast<char>((value & 0x7f) | 0x80));
    }
    grpc::Slice slices[2] = {grpc::Slice(prefix), grpc::Slice()};
    size_t slice_count = 1;
    if (length > 0 && chunked_ != nullptr) {
      // Reconstructed bytes go into a buffer the slice owns (one copy out of the reader's window).
      auto* buffer = new std::string();
      buffer->reserve(static_cast<size_t>(length));
      if (absl::Status status = chunked_->Read(offset_, length, buffer); !status.ok()) {
        delete buffer;
        return Finish(grpc::Status(grpc::StatusCode::DATA_LOSS,
                                   absl::StrCat("download of ", entry_.path, ": ", status.message())));
      }
      slices[slice_count++] = grpc::Slice(buffer->data(), buffer->size(),
                                          [](void* owned) { delete static_cast<std::string*>(owned); }, buffer);
    } else if (length > 0) {
      if (window_ == nullptr || offset_ + length > window_->end()) {
        if (window_ != nullptr) window_->Release();
        window_ = nullptr;
        // A blob just pushed was written past the page cache (Note [Direct upload writes] in
        // blob_store.cc): ask for the next windows now, so the disk reads ahead of the sender.
        posix_fadvise(descriptor_, offset_ + kDownloadWindowBytes, 2 * kDownloadWindowBytes, POSIX_FADV_WILLNEED);
        auto mapped = MappedWindow::Map(descriptor_, offset_, std::min(kDownloadWindowBytes, entry_.size - offset_));
        if (!mapped.ok()) {
          return Finish(grpc::Status(grpc::StatusCode::INTERNAL, absl::StrCat("download of ", entry_.path, ": blob ",
                                                                              entry_.sha256, ": ",
                                                                              mapped.status().message())));
        }
        window_ = *mapped;
      }
      slices[slice_count++] = window_->Slice(offset_, length);
    }
    message_ = grpc::ByteBuffer(slices, slice_count);
    offset_ += length;
    bytes_counter_.Increment(static_cast<double>(length));
    sent_header_ = true;
    StartWrite(&message_);
  }

  RegistryGrpcService& service_;
  prometheus::Counter& bytes_counter_;
  int descriptor_ = -1;
  MappedWindow* window_ = nullptr;  // the mapping the next messages are cut from (one reference held)
  std::unique_ptr<XetFileReader> chunked_;  // instead of descriptor_, for a file stored as Xet chunks
  grpc::ByteBuffer message_;
  std::string header_;  // the first message's entry and commit_id, serialized
  TreeEntry entry_;
  int64_t offset_ = 0;
  int64_t end_ = 0;  // one past the last byte to send
  bool sent_header_ = false;
};

grpc::ServerWriteReactor<grpc::ByteBuffer>* RegistryGrpcService::DownloadFile(grpc::CallbackServerContext* context,
                                                                            const grpc::ByteBuffer* request) {
  return new DownloadReactor(*this, context, request);
}

}  // namespace

void UpdateStorageGauges(Registry& registry) {
  Metrics().stored_bytes.Set(static_cast<double>(registry.stored_bytes()));
  Metrics().dedup_ratio.Set(registry.DedupRatio());
}

std::unique_ptr<grpc::Service> MakeRegistryGrpcService(Registry& registry, const Authorizer& authorizer) {
  return std::make_unique<RegistryGrpcService>(registry, authorizer);
}

}  // namespace flotilla::registry
