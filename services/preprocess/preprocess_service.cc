#include "services/preprocess/preprocess_service.h"

#include <condition_variable>
#include <deque>
#include <exception>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <absl/strings/str_cat.h>
#include <nlohmann/json.hpp>
#include <prometheus/counter.h>
#include <prometheus/gauge.h>

#include "services/common/logging.h"
#include "services/common/metrics.h"
#include "services/common/status.h"

namespace flotilla::preprocess {

using namespace flotilla::v1;

// A fixed set of threads for the RPCs' work, so gRPC's callback threads only hand work over.
// Bounded: past `max_queued` waiting tasks Submit refuses (the caller answers RESOURCE_EXHAUSTED).
class WorkQueue {
 public:
  WorkQueue(int threads, int64_t max_queued) : max_queued_(max_queued) {
    if (threads <= 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    for (int i = 0; i < threads; ++i) workers_.emplace_back([this] { Loop(); });
  }
  ~WorkQueue() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_all();
    for (std::thread& worker : workers_) worker.join();  // runs what is queued first
  }

  bool Submit(std::function<void()> task) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (stopping_ || static_cast<int64_t>(tasks_.size()) >= max_queued_) return false;
      tasks_.push_back(std::move(task));
    }
    wake_.notify_one();
    return true;
  }
  size_t threads() const { return workers_.size(); }

 private:
  void Loop() {
    while (true) {
      std::function<void()> task;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [this] { return stopping_ || !tasks_.empty(); });
        if (tasks_.empty()) return;
        task = std::move(tasks_.front());
        tasks_.pop_front();
      }
      task();
    }
  }

  const int64_t max_queued_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::function<void()>> tasks_;
  std::vector<std::thread> workers_;
  bool stopping_ = false;
};

namespace {

struct PreprocessMetrics {
  prometheus::Family<prometheus::Counter>& tokens;
  prometheus::Family<prometheus::Counter>& input_bytes;
  prometheus::Family<prometheus::Counter>& cache_lookups;
  prometheus::Counter& images;
  prometheus::Gauge& cached_models;

  static PreprocessMetrics& Get() {
    static PreprocessMetrics* metrics = new PreprocessMetrics{
        prometheus::BuildCounter()
            .Name("flotilla_preprocess_tokens_total")
            .Help("Tokens produced (Tokenize, ApplyChatTemplate with tokenize) or decoded (Detokenize, DetokenizeStream), by RPC")
            .Register(MetricsRegistry()),
        prometheus::BuildCounter()
            .Name("flotilla_preprocess_input_bytes_total")
            .Help("Bytes of text or encoded images received, by RPC")
            .Register(MetricsRegistry()),
        prometheus::BuildCounter()
            .Name("flotilla_preprocess_model_cache_lookups_total")
            .Help("Model lookups in the loaded-model cache, by RPC and result (hit, miss)")
            .Register(MetricsRegistry()),
        prometheus::BuildCounter()
            .Name("flotilla_preprocess_images_total")
            .Help("Images turned into pixel_values by ProcessImages")
            .Register(MetricsRegistry())
            .Add({}),
        prometheus::BuildGauge()
            .Name("flotilla_preprocess_cached_models")
            .Help("Models held in the loaded-model cache")
            .Register(MetricsRegistry())
            .Add({}),
    };
    return *metrics;
  }

  void CountTokens(const char* rpc, size_t count) { tokens.Add({{"rpc", rpc}}).Increment(static_cast<double>(count)); }
  void CountBytes(const char* rpc, size_t count) { input_bytes.Add({{"rpc", rpc}}).Increment(static_cast<double>(count)); }
};

absl::Status Prefixed(const absl::Status& status, const std::string& prefix) {
  if (status.ok()) return status;
  return absl::Status(status.code(), absl::StrCat(prefix, status.message()));
}

void EncodingToProto(const tokenizer::Encoding& encoding, Encoding* proto) {
  proto->mutable_ids()->Reserve(static_cast<int>(encoding.ids.size()));
  for (uint32_t id : encoding.ids) proto->add_ids(static_cast<int32_t>(id));
  for (const std::string& token : encoding.tokens) proto->add_tokens(token);
  proto->mutable_offsets()->Reserve(static_cast<int>(2 * encoding.offsets.size()));
  for (const tokenizer::Offsets& offsets : encoding.offsets) {
    proto->add_offsets(static_cast<int32_t>(offsets.start));
    proto->add_offsets(static_cast<int32_t>(offsets.end));
  }
  for (uint32_t type_id : encoding.type_ids) proto->add_type_ids(static_cast<int32_t>(type_id));
  for (uint32_t mask : encoding.attention_mask) proto->add_attention_mask(static_cast<int32_t>(mask));
}

absl::Status CheckTextBytes(const char* rpc, int64_t bytes, int64_t limit) {
  if (bytes <= limit) return absl::OkStatus();
  return absl::ResourceExhaustedError(absl::StrCat(rpc, ": the request carries ", bytes,
                                                   " bytes of text, more than this service's limit of ", limit,
                                                   " bytes (--max_text_bytes)"));
}

// The ids as the tokenizer's, refusing negative ids and ids it does not know (the Python
// library would silently drop them; a caller sending them has a bug worth hearing about).
absl::StatusOr<std::vector<uint32_t>> CheckedIds(const char* rpc, const google::protobuf::RepeatedField<int32_t>& ids,
                                                 const tokenizer::Tokenizer& tokenizer, const std::string& model,
                                                 int64_t max_ids) {
  if (ids.size() > max_ids) {
    return absl::ResourceExhaustedError(absl::StrCat(rpc, ": ", ids.size(), " ids, more than this service's limit of ",
                                                     max_ids, " per message (--max_ids)"));
  }
  std::vector<uint32_t> checked;
  checked.reserve(ids.size());
  for (int index = 0; index < ids.size(); ++index) {
    const int32_t id = ids[index];
    if (id < 0 || !tokenizer.IdToToken(static_cast<uint32_t>(id)).has_value()) {
      return absl::InvalidArgumentError(absl::StrCat(rpc, ": id ", id, " at position ", index,
                                                     " is not in the vocabulary of model ", model, " (",
                                                     tokenizer.VocabSize(), " tokens)"));
    }
    checked.push_back(static_cast<uint32_t>(id));
  }
  return checked;
}

}  // namespace

PreprocessServiceImpl::PreprocessServiceImpl(PreprocessServiceOptions options)
    : options_(std::move(options)),
      store_(options_.store),
      work_(std::make_unique<WorkQueue>(options_.work_threads, options_.max_queued_calls)) {
  PreprocessMetrics::Get();
  LogInfo("preprocess service configured",
          {{"registry", options_.store.registry_address},
           {"cache_directory", options_.store.cache_directory},
           {"allow_local_paths", options_.store.allow_local_paths},
           {"cache_entries", options_.store.cache_entries},
           {"work_threads", work_->threads()},
           {"max_text_bytes", options_.max_text_bytes},
           {"max_images", options_.max_images},
           {"max_image_pixels", options_.max_image_pixels}});
}

PreprocessServiceImpl::~PreprocessServiceImpl() = default;

absl::StatusOr<ModelHandle> PreprocessServiceImpl::GetModel(const char* rpc, const ModelReference& reference) {
  absl::StatusOr<ModelHandle> handle = store_.Get(reference);
  PreprocessMetrics& metrics = PreprocessMetrics::Get();
  metrics.cached_models.Set(static_cast<double>(store_.cached_models()));
  if (!handle.ok()) return Prefixed(handle.status(), absl::StrCat(rpc, ": "));
  metrics.cache_lookups.Add({{"rpc", rpc}, {"result", handle->cache_hit ? "hit" : "miss"}}).Increment();
  return handle;
}

template <typename Body>
grpc::ServerUnaryReactor* PreprocessServiceImpl::RunUnary(grpc::CallbackServerContext* context, const char* rpc,
                                                          Body body) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  bool queued = work_->Submit([context, reactor, rpc, body = std::move(body)]() mutable {
    absl::Status status;
    if (context->IsCancelled()) {
      status = absl::CancelledError(absl::StrCat(rpc, ": cancelled before it started"));
    } else {
      try {
        status = body();
      } catch (const std::exception& error) {  // c10::Error is a std::exception
        status = absl::InternalError(absl::StrCat(rpc, ": ", error.what()));
      } catch (...) {
        status = absl::InternalError(absl::StrCat(rpc, ": unknown exception"));
      }
    }
    reactor->Finish(ToGrpcStatus(status));
  });
  if (!queued) {
    reactor->Finish(ToGrpcStatus(absl::ResourceExhaustedError(
        absl::StrCat(rpc, ": ", options_.max_queued_calls, " calls are already waiting (--max_queued_calls); retry later"))));
  }
  return reactor;
}

// --- Tokenize ------------------------------------------------------------------------------------

grpc::ServerUnaryReactor* PreprocessServiceImpl::Tokenize(grpc::CallbackServerContext* context,
                                                          const TokenizeRequest* request, TokenizeResponse* response) {
  return RunUnary(context, "Tokenize", [this, request, response] { return DoTokenize(*request, response); });
}

absl::Status PreprocessServiceImpl::DoTokenize(const TokenizeRequest& request, TokenizeResponse* response) {
  constexpr const char* kRpc = "Tokenize";
  if (request.text_pairs_size() != 0 && request.text_pairs_size() != request.texts_size()) {
    return absl::InvalidArgumentError(absl::StrCat(kRpc, ": text_pairs must be empty or as many as texts; got ",
                                                   request.text_pairs_size(), " pairs for ", request.texts_size(), " texts"));
  }
  if (request.texts_size() > options_.max_texts) {
    return absl::ResourceExhaustedError(absl::StrCat(kRpc, ": ", request.texts_size(),
                                                     " texts, more than this service's limit of ", options_.max_texts,
                                                     " per request (--max_texts)"));
  }
  if (request.max_length() < 0) {
    return absl::InvalidArgumentError(absl::StrCat(kRpc, ": max_length must be 0 (no truncation) or positive; got ",
                                                   request.max_length()));
  }
  int64_t bytes = 0;
  for (const std::string& text : request.texts()) bytes += static_cast<int64_t>(text.size());
  for (const std::string& text : request.text_pairs()) bytes += static_cast<int64_t>(text.size());
  if (absl::Status status = CheckTextBytes(kRpc, bytes, options_.max_text_bytes); !status.ok()) return status;

  absl::StatusOr<ModelHandle> handle = GetModel(kRpc, request.model());
  if (!handle.ok()) return handle.status();
  absl::StatusOr<const tokenizer::Tokenizer*> tokenizer = handle->Tokenizer();
  if (!tokenizer.ok()) return Prefixed(tokenizer.status(), absl::StrCat(kRpc, ": "));

  tokenizer::EncodeOptions options;
  options.add_special_tokens = request.add_special_tokens();
  options.offset_type = tokenizer::OffsetType::kByte;
  tokenizer::TruncationParams truncation;
  if (request.max_length() > 0) {
    // As tokenizers' enable_truncation(max_length): the file's strategy and direction, this length.
    truncation = (*tokenizer)->truncation().value_or(tokenizer::TruncationParams{});
    truncation.max_length = static_cast<size_t>(request.max_length());
    options.truncation = &truncation;
  }

  absl::StatusOr<std::vector<tokenizer::Encoding>> encodings;
  if (request.text_pairs_size() > 0) {
    std::vector<std::pair<std::string_view, std::string_view>> pairs;
    pairs.reserve(request.texts_size());
    for (int i = 0; i < request.texts_size(); ++i) pairs.emplace_back(request.texts(i), request.text_pairs(i));
    encodings = (*tokenizer)->EncodePairBatch(pairs, options);
  } else {
    std::vector<std::string_view> texts(request.texts().begin(), request.texts().end());
    encodings = (*tokenizer)->EncodeBatch(texts, options);
  }
  if (!encodings.ok()) return Prefixed(encodings.status(), absl::StrCat(kRpc, ": model ", handle->description, ": "));
  size_t tokens = 0;
  response->mutable_encodings()->Reserve(static_cast<int>(encodings->size()));
  for (const tokenizer::Encoding& encoding : *encodings) {
    EncodingToProto(encoding, response->add_encodings());
    tokens += encoding.ids.size();
  }
  PreprocessMetrics::Get().CountTokens(kRpc, tokens);
  PreprocessMetrics::Get().CountBytes(kRpc, static_cast<size_t>(bytes));
  return absl::OkStatus();
}

// --- Detokenize ----------------------------------------------------------------------------------

grpc::ServerUnaryReactor* PreprocessServiceImpl::Detokenize(grpc::CallbackServerContext* context,
                                                            const DetokenizeRequest* request,
                                                            DetokenizeResponse* response) {
  return RunUnary(context, "Detokenize", [this, request, response] { return DoDetokenize(*request, response); });
}

absl::Status PreprocessServiceImpl::DoDetokenize(const DetokenizeRequest& request, DetokenizeResponse* response) {
  constexpr const char* kRpc = "Detokenize";
  if (request.ids_size() > options_.max_ids) {
    return absl::ResourceExhaustedError(absl::StrCat(kRpc, ": ", request.ids_size(),
                                                     " ids, more than this service's limit of ", options_.max_ids,
                                                     " per message (--max_ids)"));
  }
  absl::StatusOr<ModelHandle> handle = GetModel(kRpc, request.model());
  if (!handle.ok()) return handle.status();
  absl::StatusOr<const tokenizer::Tokenizer*> tokenizer = handle->Tokenizer();
  if (!tokenizer.ok()) return Prefixed(tokenizer.status(), absl::StrCat(kRpc, ": "));
  auto ids = CheckedIds(kRpc, request.ids(), **tokenizer, handle->description, options_.max_ids);
  if (!ids.ok()) return ids.status();
  absl::StatusOr<std::string> text = (*tokenizer)->Decode(*ids, request.skip_special_tokens());
  if (!text.ok()) return Prefixed(text.status(), absl::StrCat(kRpc, ": model ", handle->description, ": "));
  response->set_text(*std::move(text));
  PreprocessMetrics::Get().CountTokens(kRpc, ids->size());
  return absl::OkStatus();
}

// --- DetokenizeStream ----------------------------------------------------------------------------

namespace {

// One reactor per stream. Messages are handled strictly in turn: read one, decode it on the work
// pool, write its one response, then read the next — so at most one operation is outstanding and
// the work never races OnDone.
class DetokenizeStreamReactor final : public grpc::ServerBidiReactor<DetokenizeStreamRequest, DetokenizeStreamResponse> {
 public:
  DetokenizeStreamReactor(PreprocessServiceImpl& service, grpc::CallbackServerContext* context)
      : service_(service), context_(context) {
    StartRead(&request_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) return Finish(grpc::Status::OK);  // the client finished writing (or went away)
    bool queued = service_.work().Submit([this] {
      absl::Status status;
      try {
        status = Handle();
      } catch (const std::exception& error) {
        status = absl::InternalError(absl::StrCat(kRpc, ": ", error.what()));
      }
      if (!status.ok()) return Finish(ToGrpcStatus(status));
      StartWrite(&response_);
    });
    if (!queued) {
      Finish(ToGrpcStatus(absl::ResourceExhaustedError(absl::StrCat(kRpc, ": the work queue is full; retry later"))));
    }
  }

  void OnWriteDone(bool ok) override {
    if (!ok) return Finish(grpc::Status(grpc::StatusCode::CANCELLED, "DetokenizeStream: the client went away"));
    request_.Clear();
    StartRead(&request_);
  }

  void OnDone() override { delete this; }

 private:
  static constexpr const char* kRpc = "DetokenizeStream";

  absl::Status Handle() {
    response_.Clear();
    if (context_->IsCancelled()) return absl::CancelledError(absl::StrCat(kRpc, ": cancelled"));
    if (!decoder_) {
      // The first message names the model and whether special tokens are skipped, for the stream.
      absl::StatusOr<ModelHandle> handle = service_.store().Get(request_.model());
      if (!handle.ok()) return Prefixed(handle.status(), absl::StrCat(kRpc, ": "));
      absl::StatusOr<const tokenizer::Tokenizer*> tokenizer = handle->Tokenizer();
      if (!tokenizer.ok()) return Prefixed(tokenizer.status(), absl::StrCat(kRpc, ": "));
      PreprocessMetrics::Get()
          .cache_lookups.Add({{"rpc", kRpc}, {"result", handle->cache_hit ? "hit" : "miss"}})
          .Increment();
      handle_ = *std::move(handle);
      tokenizer_ = *tokenizer;
      decoder_.emplace(*tokenizer_, request_.skip_special_tokens());
    }
    auto ids = CheckedIds(kRpc, request_.ids(), *tokenizer_, handle_.description, service_.options().max_ids);
    if (!ids.ok()) return ids.status();
    std::string text;
    for (uint32_t id : *ids) {
      absl::StatusOr<std::string> piece = decoder_->Step(id);
      if (!piece.ok()) return Prefixed(piece.status(), absl::StrCat(kRpc, ": model ", handle_.description, ": "));
      text += *piece;
    }
    response_.set_text(std::move(text));
    PreprocessMetrics::Get().CountTokens(kRpc, ids->size());
    return absl::OkStatus();
  }

  PreprocessServiceImpl& service_;
  grpc::CallbackServerContext* context_;
  DetokenizeStreamRequest request_;
  DetokenizeStreamResponse response_;
  ModelHandle handle_;  // keeps the tokenizer alive even if the cache evicts it
  const tokenizer::Tokenizer* tokenizer_ = nullptr;
  std::optional<tokenizer::IncrementalDecoder> decoder_;
};

}  // namespace

grpc::ServerBidiReactor<DetokenizeStreamRequest, DetokenizeStreamResponse>* PreprocessServiceImpl::DetokenizeStream(
    grpc::CallbackServerContext* context) {
  return new DetokenizeStreamReactor(*this, context);
}

// --- ApplyChatTemplate ---------------------------------------------------------------------------

grpc::ServerUnaryReactor* PreprocessServiceImpl::ApplyChatTemplate(grpc::CallbackServerContext* context,
                                                                   const ApplyChatTemplateRequest* request,
                                                                   ApplyChatTemplateResponse* response) {
  return RunUnary(context, "ApplyChatTemplate",
                  [this, request, response] { return DoApplyChatTemplate(*request, response); });
}

absl::Status PreprocessServiceImpl::DoApplyChatTemplate(const ApplyChatTemplateRequest& request,
                                                        ApplyChatTemplateResponse* response) {
  constexpr const char* kRpc = "ApplyChatTemplate";
  int64_t bytes = static_cast<int64_t>(request.tools_json().size() + request.kwargs_json().size());
  for (const ChatMessage& message : request.messages()) {
    bytes += static_cast<int64_t>(message.role().size() + message.content().size() + message.extra_json().size());
  }
  if (absl::Status status = CheckTextBytes(kRpc, bytes, options_.max_text_bytes); !status.ok()) return status;

  // The conversation as apply_chat_template receives it: {"role", "content"} plus the extra fields
  // (which may replace content, e.g. by a list of parts, or set it to null for a tool call).
  nlohmann::ordered_json messages = nlohmann::ordered_json::array();
  for (int index = 0; index < request.messages_size(); ++index) {
    const ChatMessage& message = request.messages(index);
    nlohmann::ordered_json entry = {{"role", message.role()}, {"content", message.content()}};
    if (!message.extra_json().empty()) {
      nlohmann::ordered_json extra = nlohmann::ordered_json::parse(message.extra_json(), nullptr, false);
      if (extra.is_discarded() || !extra.is_object()) {
        return absl::InvalidArgumentError(
            absl::StrCat(kRpc, ": messages[", index, "].extra_json is not a JSON object"));
      }
      for (auto& [key, value] : extra.items()) entry[key] = value;
    }
    messages.push_back(std::move(entry));
  }
  chat_template::ChatTemplateOptions options;
  options.add_generation_prompt = request.add_generation_prompt();
  if (!request.tools_json().empty()) {
    nlohmann::json tools = nlohmann::json::parse(request.tools_json(), nullptr, false);
    if (tools.is_discarded() || !tools.is_array()) {
      return absl::InvalidArgumentError(absl::StrCat(kRpc, ": tools_json is not a JSON array"));
    }
    options.tools_json = request.tools_json();
  }
  if (!request.kwargs_json().empty()) {
    nlohmann::json kwargs = nlohmann::json::parse(request.kwargs_json(), nullptr, false);
    if (kwargs.is_discarded() || !kwargs.is_object()) {
      return absl::InvalidArgumentError(absl::StrCat(kRpc, ": kwargs_json is not a JSON object"));
    }
    options.extra_context_json = request.kwargs_json();
  }

  absl::StatusOr<ModelHandle> handle = GetModel(kRpc, request.model());
  if (!handle.ok()) return handle.status();
  absl::StatusOr<const chat_template::ModelChatTemplate*> model_template = handle->ChatTemplate();
  if (!model_template.ok()) return Prefixed(model_template.status(), absl::StrCat(kRpc, ": "));
  const tokenizer::Tokenizer* tokenizer = nullptr;
  if (request.tokenize()) {
    absl::StatusOr<const tokenizer::Tokenizer*> loaded = handle->Tokenizer();
    if (!loaded.ok()) return Prefixed(loaded.status(), absl::StrCat(kRpc, ": tokenize: "));
    tokenizer = *loaded;
  }

  std::optional<std::string> name;
  if (!request.template_name().empty()) name = request.template_name();
  const std::string messages_text = messages.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
  const std::string model_prefix = absl::StrCat(kRpc, ": model ", handle->description, ": ");
  absl::StatusOr<std::string> prompt = handle->model->RenderChat(messages_text, options, name);
  if (!prompt.ok()) return Prefixed(prompt.status(), model_prefix);

  if (tokenizer != nullptr) {
    tokenizer::EncodeOptions encode_options;
    encode_options.add_special_tokens = false;  // the template wrote them, as apply_chat_template(tokenize=True)
    absl::StatusOr<tokenizer::Encoding> encoding = tokenizer->Encode(*prompt, encode_options);
    if (!encoding.ok()) return Prefixed(encoding.status(), absl::StrCat(model_prefix, "tokenize: "));
    EncodingToProto(*encoding, response->mutable_encoding());
    PreprocessMetrics::Get().CountTokens(kRpc, encoding->ids.size());
  }
  response->set_prompt(*std::move(prompt));
  PreprocessMetrics::Get().CountBytes(kRpc, static_cast<size_t>(bytes));
  return absl::OkStatus();
}

// --- ProcessImages -------------------------------------------------------------------------------

grpc::ServerUnaryReactor* PreprocessServiceImpl::ProcessImages(grpc::CallbackServerContext* context,
                                                               const ProcessImagesRequest* request,
                                                               ProcessImagesResponse* response) {
  return RunUnary(context, "ProcessImages", [this, request, response] { return DoProcessImages(*request, response); });
}

absl::Status PreprocessServiceImpl::DoProcessImages(const ProcessImagesRequest& request,
                                                    ProcessImagesResponse* response) {
  constexpr const char* kRpc = "ProcessImages";
  if (request.images_size() == 0) return absl::InvalidArgumentError(absl::StrCat(kRpc, ": the request has no images"));
  if (request.images_size() > options_.max_images) {
    return absl::ResourceExhaustedError(absl::StrCat(kRpc, ": ", request.images_size(),
                                                     " images, more than this service's limit of ", options_.max_images,
                                                     " per request (--max_images)"));
  }
  absl::StatusOr<ModelHandle> handle = GetModel(kRpc, request.model());
  if (!handle.ok()) return handle.status();
  absl::StatusOr<const image::ImageProcessor*> processor = handle->ImageProcessor();
  if (!processor.ok()) return Prefixed(processor.status(), absl::StrCat(kRpc, ": "));
  absl::Status status = RunImageProcessor(**processor, request, options_.max_image_pixels, response);
  if (!status.ok()) return Prefixed(status, absl::StrCat(kRpc, ": model ", handle->description, ": "));
  size_t bytes = 0;
  for (const std::string& image : request.images()) bytes += image.size();
  PreprocessMetrics::Get().images.Increment(static_cast<double>(request.images_size()));
  PreprocessMetrics::Get().CountBytes(kRpc, bytes);
  return absl::OkStatus();
}

}  // namespace flotilla::preprocess
