// Where the preprocess service gets its tokenizers, chat templates and image processors: a model
// named by a registry reference ("namespace/name@revision", resolved to a commit id on every
// call, so a moved branch is seen at once) or, when allowed, by a local folder. Only the
// processor files are pulled (tokenizer.json, tokenizer_config.json, chat templates,
// preprocessor_config.json ...), never the weights, into <cache_dir>/<namespace>/<name>/<commit>/.
// Loaded models are kept in an LRU keyed by commit id (see model_cache.h).
//
//   ModelStore store({.registry_address = "127.0.0.1:7700", .cache_directory = "/var/cache/pp"});
//   absl::StatusOr<ModelHandle> handle = store.Get(request.model());
//   if (!handle.ok()) return handle.status();        // NOT_FOUND names the reference
//   absl::StatusOr<const tokenizer::Tokenizer*> tokenizer = handle->Tokenizer();
//
// Thread-safety: Get may be called from any number of threads; a PreprocessModel is immutable.
// Get blocks (registry calls, file loading): call it off gRPC's callback threads.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include <absl/container/flat_hash_map.h>
#include <absl/status/statusor.h>

#include "flotilla/v1/common.pb.h"
#include "services/preprocess/chat_template/chat_template.h"
#include "services/preprocess/model_cache.h"
#include "services/preprocess/tokenizer/tokenizer.h"
#include "services/preprocess/tokenizer/tokenizer_settings.h"

namespace flotilla::image {
class ImageProcessor;
}
namespace flotilla::registry {
class RegistryClient;
}

namespace flotilla::preprocess {

// One model's processors, loaded from one folder. A part the folder lacks (or fails to load) keeps
// the reason in its status, returned to the RPCs that need it.
struct PreprocessModel {
  std::string directory;
  std::shared_ptr<const tokenizer::Tokenizer> tokenizer;
  absl::Status tokenizer_status;
  std::shared_ptr<const chat_template::ModelChatTemplate> chat_template;
  // chat_template's templates parsed once, by source text (what ModelChatTemplate::Select returns).
  absl::flat_hash_map<std::string, chat_template::ChatTemplate> parsed_chat_templates;
  absl::Status chat_template_status;
  std::shared_ptr<const image::ImageProcessor> image_processor;
  absl::Status image_processor_status;
  // generation_config.json's eos ids and sampling defaults (empty when the folder has none).
  tokenizer::GenerationDefaults generation_defaults;

  // Renders the chat template transformers' get_chat_template would pick (`name`, else tool_use
  // when tools are given and the model has one, else the default), with the tokenizer's special
  // tokens, reusing the parse made at load.
  absl::StatusOr<std::string> RenderChat(const std::string& messages_json, chat_template::ChatTemplateOptions options,
                                         const std::optional<std::string>& name = std::nullopt) const;
};

// A loaded model and how this call named it.
struct ModelHandle {
  std::shared_ptr<const PreprocessModel> model;
  // For messages: "acme/smol@main (commit 9f1c2b3d4e5f)" or "local folder /data/smol".
  std::string description;
  bool cache_hit = false;

  // The part, or FAILED_PRECONDITION naming the model and what it lacks.
  absl::StatusOr<const tokenizer::Tokenizer*> Tokenizer() const;
  absl::StatusOr<const chat_template::ModelChatTemplate*> ChatTemplate() const;
  absl::StatusOr<const image::ImageProcessor*> ImageProcessor() const;
};

struct ModelStoreOptions {
  // host:port of the registry; empty: registry references are refused (FAILED_PRECONDITION).
  std::string registry_address;
  std::string registry_token;
  // Where pulled processor files go.
  std::string cache_directory;
  // Accept ModelReference.local_path (tests, development).
  bool allow_local_paths = false;
  // Loaded models kept (LRU).
  size_t cache_entries = 16;
  // Deadline of resolving a revision at the registry.
  double registry_timeout_seconds = 60;
};

// Loads an image processor from `directory`/preprocessor_config.json (preprocess_images.cc; an
// Unimplemented error in builds without LibTorch).
absl::StatusOr<std::shared_ptr<const image::ImageProcessor>> LoadImageProcessor(const std::string& directory);

// Whether a repository file is one the preprocess service reads (the pull filter).
bool IsProcessorFile(const std::string& repository_path);

class ModelStore {
 public:
  explicit ModelStore(ModelStoreOptions options);
  ~ModelStore();

  absl::StatusOr<ModelHandle> Get(const flotilla::v1::ModelReference& reference);

  size_t cached_models() const { return cache_.size(); }

 private:
  absl::StatusOr<ModelHandle> GetFromRegistry(const flotilla::v1::ModelReference& reference);
  absl::StatusOr<ModelHandle> GetLocal(const std::string& path);

  ModelStoreOptions options_;
  std::unique_ptr<registry::RegistryClient> registry_;
  LoadingCache<PreprocessModel> cache_;
};

// Loads whatever processors `directory` holds (used by ModelStore; public for tests and the CLI).
absl::StatusOr<std::shared_ptr<const PreprocessModel>> LoadPreprocessModel(const std::string& directory,
                                                                           const std::string& description);

}  // namespace flotilla::preprocess
