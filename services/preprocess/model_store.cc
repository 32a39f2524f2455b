#include "services/preprocess/model_store.h"

#include <chrono>
#include <filesystem>
#include <system_error>

#include <absl/strings/match.h>
#include <absl/strings/str_cat.h>
#include <grpcpp/grpcpp.h>

#include "flotilla/v1/registry.grpc.pb.h"
#include "services/common/logging.h"
#include "services/common/status.h"
#include "services/registry/names.h"
#include "services/registry/registry_client.h"

namespace flotilla::preprocess {
namespace {

namespace fs = std::filesystem;

// The files a processor reads, at the repository's root (transformers' from_pretrained of a
// tokenizer or an image processor reads these and nothing else).
constexpr const char* kProcessorFiles[] = {
    "tokenizer.json",     "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "chat_template.jinja", "chat_template.json",   "preprocessor_config.json", "processor_config.json",
    "generation_config.json", "config.json",
};
constexpr char kAdditionalChatTemplates[] = "additional_chat_templates";

absl::Status Prefixed(const absl::Status& status, const std::string& prefix) {
  return absl::Status(status.code(), absl::StrCat(prefix, status.message()));
}

// A key that changes when any processor file of a local folder changes (size or modification time).
std::string LocalCacheKey(const fs::path& directory) {
  std::string key = absl::StrCat("local:", directory.string());
  std::error_code error;
  auto stamp = [&](const fs::path& path) {
    auto time = fs::last_write_time(path, error);
    if (error) return;
    auto size = fs::file_size(path, error);
    if (error) return;
    absl::StrAppend(&key, "|", path.filename().string(), ":", size, ":",
                    time.time_since_epoch().count());
  };
  for (const char* name : kProcessorFiles) stamp(directory / name);
  if (fs::is_directory(directory / kAdditionalChatTemplates, error)) {
    for (const auto& entry : fs::directory_iterator(directory / kAdditionalChatTemplates, error)) stamp(entry.path());
  }
  return key;
}

}  // namespace

absl::StatusOr<std::string> PreprocessModel::RenderChat(const std::string& messages_json,
                                                      chat_template::ChatTemplateOptions options,
                                                      const std::optional<std::string>& name) const {
  if (chat_template == nullptr) return chat_template_status;
  absl::StatusOr<std::string> source = chat_template->Select(name, options.tools_json.has_value());
  if (!source.ok()) return source.status();
  if (auto parsed = parsed_chat_templates.find(*source); parsed != parsed_chat_templates.end()) {
    options.special_tokens = chat_template->special_tokens;
    return parsed->second.Render(messages_json, options);
  }
  return chat_template->Render(messages_json, options, name);  // reports the parse error
}

bool IsProcessorFile(const std::string& repository_path) {
  for (const char* name : kProcessorFiles) {
    if (repository_path == name) return true;
  }
  return absl::StartsWith(repository_path, absl::StrCat(kAdditionalChatTemplates, "/")) &&
         absl::EndsWith(repository_path, ".jinja") &&
         repository_path.find('/', sizeof(kAdditionalChatTemplates)) == std::string::npos;
}

absl::StatusOr<std::shared_ptr<const PreprocessModel>> LoadPreprocessModel(const std::string& directory,
                                                                           const std::string& description) {
  std::error_code error;
  if (!fs::is_directory(directory, error)) {
    return absl::NotFoundError(absl::StrCat("model ", description, ": ", directory, " is not a directory"));
  }
  const auto started = std::chrono::steady_clock::now();
  auto model = std::make_shared<PreprocessModel>();
  model->directory = directory;

  if (fs::exists(fs::path(directory) / "tokenizer.json", error)) {
    auto loaded = tokenizer::Tokenizer::FromDirectory(directory);
    if (loaded.ok()) {
      model->tokenizer = std::shared_ptr<const tokenizer::Tokenizer>(std::move(*loaded));
    } else {
      model->tokenizer_status = absl::FailedPreconditionError(absl::StrCat("tokenizer.json does not load: ", loaded.status().message()));
    }
  } else {
    model->tokenizer_status = absl::FailedPreconditionError("has no tokenizer.json");
  }

  auto chat_template = chat_template::LoadChatTemplate(directory);
  if (chat_template.ok() && !chat_template->templates.empty()) {
    auto shared = std::make_shared<chat_template::ModelChatTemplate>(std::move(*chat_template));
    // Parse once here; a template that does not parse is parsed again (and its error reported) per call.
    for (const auto& [name, source] : shared->templates) {
      auto parsed = chat_template::ChatTemplate::Parse(source);
      if (parsed.ok()) model->parsed_chat_templates.emplace(source, *std::move(parsed));
    }
    model->chat_template = std::move(shared);
  } else if (chat_template.ok()) {
    model->chat_template_status =
        absl::FailedPreconditionError("has no chat template (tokenizer_config.json chat_template or chat_template.jinja)");
  } else {
    model->chat_template_status = absl::FailedPreconditionError(
        absl::StrCat("chat template does not load: ", chat_template.status().message()));
  }

  if (absl::StatusOr<tokenizer::GenerationDefaults> defaults = tokenizer::LoadGenerationDefaults(directory); defaults.ok()) {
    model->generation_defaults = *std::move(defaults);
  }

  if (fs::exists(fs::path(directory) / "preprocessor_config.json", error) ||
      fs::exists(fs::path(directory) / "processor_config.json", error)) {
    auto loaded = LoadImageProcessor(directory);
    if (loaded.ok()) {
      model->image_processor = *std::move(loaded);
    } else if (absl::IsNotFound(loaded.status())) {
      model->image_processor_status = absl::FailedPreconditionError(std::string(loaded.status().message()));
    } else {
      model->image_processor_status = absl::Status(
          absl::IsUnimplemented(loaded.status()) ? absl::StatusCode::kUnimplemented : absl::StatusCode::kFailedPrecondition,
          absl::StrCat("image processor does not load: ", loaded.status().message()));
    }
  } else {
    model->image_processor_status =
        absl::FailedPreconditionError("has no image processor (preprocessor_config.json or processor_config.json)");
  }

  LogInfo("preprocess model loaded",
          {{"model", description},
           {"directory", directory},
           {"tokenizer", model->tokenizer != nullptr},
           {"chat_template", model->chat_template != nullptr},
           {"image_processor", model->image_processor != nullptr},
           {"seconds", std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count()}});
  return std::shared_ptr<const PreprocessModel>(std::move(model));
}

absl::StatusOr<const tokenizer::Tokenizer*> ModelHandle::Tokenizer() const {
  if (model->tokenizer) return model->tokenizer.get();
  return Prefixed(model->tokenizer_status, absl::StrCat("model ", description, " "));
}

absl::StatusOr<const chat_template::ModelChatTemplate*> ModelHandle::ChatTemplate() const {
  if (model->chat_template) return model->chat_template.get();
  return Prefixed(model->chat_template_status, absl::StrCat("model ", description, " "));
}

absl::StatusOr<const image::ImageProcessor*> ModelHandle::ImageProcessor() const {
  if (model->image_processor) return model->image_processor.get();
  return Prefixed(model->image_processor_status, absl::StrCat("model ", description, " "));
}

ModelStore::ModelStore(ModelStoreOptions options)
    : options_(std::move(options)), cache_(options_.cache_entries) {
  if (!options_.registry_address.empty()) {
    registry_ = std::make_unique<registry::RegistryClient>(options_.registry_address, options_.registry_token);
  }
}

ModelStore::~ModelStore() = default;

absl::StatusOr<ModelHandle> ModelStore::Get(const flotilla::v1::ModelReference& reference) {
  const bool names_repository = !reference.namespace_().empty() || !reference.name().empty();
  if (!reference.local_path().empty()) {
    if (names_repository) {
      return absl::InvalidArgumentError(absl::StrCat("model reference names both a repository (", reference.namespace_(), "/",
                                                     reference.name(), ") and a local_path (", reference.local_path(),
                                                     "); give one"));
    }
    return GetLocal(reference.local_path());
  }
  if (!names_repository) {
    return absl::InvalidArgumentError("the request names no model: set model.namespace and model.name (or model.local_path)");
  }
  return GetFromRegistry(reference);
}

absl::StatusOr<ModelHandle> ModelStore::GetLocal(const std::string& path) {
  if (!options_.allow_local_paths) {
    return absl::PermissionDeniedError(absl::StrCat("model local_path '", path,
                                                    "' refused: this service was started without --allow_local_paths"));
  }
  std::error_code error;
  fs::path canonical = fs::weakly_canonical(fs::absolute(path, error), error);
  if (error || !fs::is_directory(canonical, error)) {
    return absl::NotFoundError(absl::StrCat("model local folder '", path, "' not found (not a directory)"));
  }
  ModelHandle handle;
  handle.description = absl::StrCat("local folder ", canonical.string());
  const std::string directory = canonical.string();
  const std::string description = handle.description;
  auto model = cache_.GetOrLoad(LocalCacheKey(canonical), [&] { return LoadPreprocessModel(directory, description); },
                                &handle.cache_hit);
  if (!model.ok()) return model.status();
  handle.model = *std::move(model);
  return handle;
}

absl::StatusOr<ModelHandle> ModelStore::GetFromRegistry(const flotilla::v1::ModelReference& reference) {
  std::string text = absl::StrCat(reference.namespace_(), "/", reference.name());
  if (!reference.revision().empty()) absl::StrAppend(&text, "@", reference.revision());
  auto parsed = registry::ParseReference(text);
  if (!parsed.ok()) return Prefixed(parsed.status(), absl::StrCat("model reference '", text, "': "));
  if (!registry_) {
    return absl::FailedPreconditionError(absl::StrCat("model '", text,
                                                      "' is a registry reference, but this service was started without --registry"));
  }
  // A full commit id names an immutable snapshot: no need to ask the registry what it resolves to
  // (the gateway pins every request to the commit its workers loaded, so this is its hot path).
  std::string commit_id = reference.revision();
  const bool is_commit_id = commit_id.size() == 40 &&
                            commit_id.find_first_not_of("0123456789abcdef") == std::string::npos;
  if (!is_commit_id) {
    auto stub = flotilla::v1::RegistryService::NewStub(registry_->channel());
    flotilla::v1::ResolveRevisionRequest request;
    *request.mutable_reference() = reference;
    request.mutable_reference()->clear_local_path();
    flotilla::v1::ResolveRevisionResponse response;
    grpc::ClientContext context;
    if (!options_.registry_token.empty()) context.AddMetadata("authorization", absl::StrCat("Bearer ", options_.registry_token));
    context.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::milliseconds(static_cast<int64_t>(options_.registry_timeout_seconds * 1000)));
    if (grpc::Status status = stub->ResolveRevision(&context, request, &response); !status.ok()) {
      absl::Status resolved = FromGrpcStatus(status);
      if (absl::IsNotFound(resolved)) {
        return absl::NotFoundError(absl::StrCat("model '", text, "' not found in the registry: ", resolved.message()));
      }
      return Prefixed(resolved, absl::StrCat("model '", text, "': resolving the revision at the registry (",
                                             options_.registry_address, "): "));
    }
    commit_id = response.commit_id();
  }
  ModelHandle handle;
  handle.description = absl::StrCat(text, " (commit ", commit_id.substr(0, 12), ")");
  const std::string pinned = absl::StrCat(parsed->namespace_name, "/", parsed->name, "@", commit_id);
  const std::string description = handle.description;
  auto model = cache_.GetOrLoad(
      pinned,
      [&]() -> LoadingCache<PreprocessModel>::Result {
        auto directory = registry_->PullToCache(pinned, options_.cache_directory, IsProcessorFile);
        if (!directory.ok()) {
          return Prefixed(directory.status(), absl::StrCat("model '", text, "': pulling its processor files: "));
        }
        return LoadPreprocessModel(*directory, description);
      },
      &handle.cache_hit);
  if (!model.ok()) return model.status();
  handle.model = *std::move(model);
  return handle;
}

}  // namespace flotilla::preprocess
