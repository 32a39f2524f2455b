// The preprocess gRPC service (flotilla.v1.PreprocessService): Tokenize, Detokenize,
// DetokenizeStream, ApplyChatTemplate and ProcessImages over the tokenizer, chat_template and
// image libraries, with models named by registry reference (or local folder) and cached by commit
// id (model_store.h).
//
//   PreprocessServiceOptions options;
//   options.store.registry_address = "127.0.0.1:7700";
//   options.store.cache_directory = data_directory + "/cache";
//   bundle.grpc_services.push_back(std::make_unique<PreprocessServiceImpl>(options));
//
// Every handler returns at once: its work (loading a model, encoding, decoding images) runs on the
// service's own pool of work threads, never on gRPC's callback threads, and finishes the call from
// there. Errors are absl::Status inside and grpc::Status at the edge; no exception leaves a handler
// (c10::Error and std::exception become INTERNAL naming the RPC).
//
// Thread-safety: handlers run concurrently; the state they share (ModelStore, the pool,
// Prometheus metrics) is thread-safe.
#pragma once

#include <cstdint>
#include <memory>

#include "flotilla/v1/preprocess.grpc.pb.h"
#include "services/preprocess/model_store.h"

namespace flotilla::preprocess {

struct PreprocessServiceOptions {
  ModelStoreOptions store;
  // Bytes of text one request may carry (Tokenize: texts and pairs; ApplyChatTemplate: messages,
  // tools and kwargs). RESOURCE_EXHAUSTED above it.
  int64_t max_text_bytes = 16 << 20;
  // Texts per Tokenize request.
  int64_t max_texts = 65536;
  // Ids per Detokenize request and per DetokenizeStream message.
  int64_t max_ids = 1 << 20;
  // Images per ProcessImages request, and pixels (height * width, from the header) per image.
  int64_t max_images = 64;
  int64_t max_image_pixels = 89'478'485;
  // Threads running the RPCs' work; 0: one per hardware thread.
  int work_threads = 0;
  // Calls waiting for a work thread before new ones are refused with RESOURCE_EXHAUSTED.
  int64_t max_queued_calls = 4096;
};

class WorkQueue;

class PreprocessServiceImpl final : public flotilla::v1::PreprocessService::CallbackService {
 public:
  explicit PreprocessServiceImpl(PreprocessServiceOptions options);
  ~PreprocessServiceImpl() override;

  grpc::ServerUnaryReactor* Tokenize(grpc::CallbackServerContext* context, const flotilla::v1::TokenizeRequest* request,
                                     flotilla::v1::TokenizeResponse* response) override;
  grpc::ServerUnaryReactor* Detokenize(grpc::CallbackServerContext* context,
                                       const flotilla::v1::DetokenizeRequest* request,
                                       flotilla::v1::DetokenizeResponse* response) override;
  grpc::ServerBidiReactor<flotilla::v1::DetokenizeStreamRequest, flotilla::v1::DetokenizeStreamResponse>*
  DetokenizeStream(grpc::CallbackServerContext* context) override;
  grpc::ServerUnaryReactor* ApplyChatTemplate(grpc::CallbackServerContext* context,
                                              const flotilla::v1::ApplyChatTemplateRequest* request,
                                              flotilla::v1::ApplyChatTemplateResponse* response) override;
  grpc::ServerUnaryReactor* ProcessImages(grpc::CallbackServerContext* context,
                                          const flotilla::v1::ProcessImagesRequest* request,
                                          flotilla::v1::ProcessImagesResponse* response) override;

  // The RPCs' logic as plain functions (the handlers run these on the work pool).
  absl::Status DoTokenize(const flotilla::v1::TokenizeRequest& request, flotilla::v1::TokenizeResponse* response);
  absl::Status DoDetokenize(const flotilla::v1::DetokenizeRequest& request, flotilla::v1::DetokenizeResponse* response);
  absl::Status DoApplyChatTemplate(const flotilla::v1::ApplyChatTemplateRequest& request,
                                   flotilla::v1::ApplyChatTemplateResponse* response);
  absl::Status DoProcessImages(const flotilla::v1::ProcessImagesRequest& request,
                               flotilla::v1::ProcessImagesResponse* response);

  const PreprocessServiceOptions& options() const { return options_; }
  ModelStore& store() { return store_; }
  WorkQueue& work() { return *work_; }

 private:
  template <typename Body>
  grpc::ServerUnaryReactor* RunUnary(grpc::CallbackServerContext* context, const char* rpc, Body body);
  absl::StatusOr<ModelHandle> GetModel(const char* rpc, const flotilla::v1::ModelReference& reference);

  PreprocessServiceOptions options_;
  ModelStore store_;
  std::unique_ptr<WorkQueue> work_;
};

// ProcessImages' tensor work (preprocess_images.cc; UNIMPLEMENTED in builds without LibTorch).
absl::Status RunImageProcessor(const image::ImageProcessor& processor, const flotilla::v1::ProcessImagesRequest& request,
                               int64_t max_image_pixels, flotilla::v1::ProcessImagesResponse* response);

}  // namespace flotilla::preprocess
