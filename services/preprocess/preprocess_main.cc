// The preprocess service binary: tokenizers, chat templates and image processors of models in the
// registry (or, with --allow_local_paths, in local folders), over gRPC. See preprocess_service.h.
//
//   flotilla-preprocess --registry=127.0.0.1:7700 --data_dir=/var/lib/flotilla/preprocess
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>

#include <absl/flags/flag.h>
#include <absl/strings/str_cat.h>

#include "services/common/server.h"
#include "services/preprocess/preprocess_service.h"

ABSL_FLAG(std::string, registry, "", "host:port of the registry that model references are resolved and pulled from");
ABSL_FLAG(std::string, registry_token, "", "access token for the registry (default $FLOTILLA_TOKEN)");
ABSL_FLAG(std::string, cache_dir, "", "where pulled processor files go (default <data_dir>/cache, or a temporary folder)");
ABSL_FLAG(bool, allow_local_paths, false, "accept ModelReference.local_path (a folder on this machine): tests and development");
ABSL_FLAG(int64_t, cache_entries, 16, "loaded models (tokenizer, chat template, image processor) kept, least recently used first out");
ABSL_FLAG(int64_t, max_text_bytes, 16 << 20, "bytes of text one request may carry");
ABSL_FLAG(int64_t, max_texts, 65536, "texts per Tokenize request");
ABSL_FLAG(int64_t, max_ids, 1 << 20, "token ids per Detokenize request or DetokenizeStream message");
ABSL_FLAG(int64_t, max_images, 64, "images per ProcessImages request");
ABSL_FLAG(int64_t, max_image_pixels, 89'478'485, "height*width of one image, checked before decoding (decompression bombs)");
ABSL_FLAG(int, work_threads, 0, "threads running the RPCs' work (0: one per hardware thread)");
ABSL_FLAG(int64_t, max_queued_calls, 4096, "calls waiting for a work thread before new ones get RESOURCE_EXHAUSTED");
ABSL_FLAG(double, registry_timeout_seconds, 60, "deadline for resolving a revision at the registry");

int main(int argc, char** argv) {
  return flotilla::ServiceMain(argc, argv, "preprocess",
      [](const flotilla::ServerOptions& server) -> absl::StatusOr<flotilla::ServiceBundle> {
        flotilla::preprocess::PreprocessServiceOptions options;
        options.store.registry_address = absl::GetFlag(FLAGS_registry);
        options.store.registry_token = absl::GetFlag(FLAGS_registry_token);
        if (options.store.registry_token.empty()) {
          if (const char* token = std::getenv("FLOTILLA_TOKEN"); token != nullptr) options.store.registry_token = token;
        }
        options.store.cache_directory = absl::GetFlag(FLAGS_cache_dir);
        if (options.store.cache_directory.empty()) {
          options.store.cache_directory =
              server.data_directory.empty()
                  ? (std::filesystem::temp_directory_path() / absl::StrCat("flotilla-preprocess-cache-", getpid())).string()
                  : (std::filesystem::path(server.data_directory) / "cache").string();
        }
        if (absl::Status prepared = flotilla::PrepareDataDirectory(options.store.cache_directory); !prepared.ok()) {
          return prepared;
        }
        options.store.allow_local_paths = absl::GetFlag(FLAGS_allow_local_paths);
        options.store.registry_timeout_seconds = absl::GetFlag(FLAGS_registry_timeout_seconds);
        const int64_t cache_entries = absl::GetFlag(FLAGS_cache_entries);
        if (cache_entries < 1) {
          return absl::InvalidArgumentError(absl::StrCat("--cache_entries must be at least 1; got ", cache_entries));
        }
        options.store.cache_entries = static_cast<size_t>(cache_entries);
        options.max_text_bytes = absl::GetFlag(FLAGS_max_text_bytes);
        options.max_texts = absl::GetFlag(FLAGS_max_texts);
        options.max_ids = absl::GetFlag(FLAGS_max_ids);
        options.max_images = absl::GetFlag(FLAGS_max_images);
        options.max_image_pixels = absl::GetFlag(FLAGS_max_image_pixels);
        options.work_threads = absl::GetFlag(FLAGS_work_threads);
        options.max_queued_calls = absl::GetFlag(FLAGS_max_queued_calls);
        flotilla::ServiceBundle bundle;
        bundle.grpc_services.push_back(std::make_unique<flotilla::preprocess::PreprocessServiceImpl>(options));
        return bundle;
      });
}
