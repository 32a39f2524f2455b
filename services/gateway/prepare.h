// From a validated API request to what the generation core runs: the served model's processors,
// the chat template (tools included), tokenization, the context-length check, defaults from
// generation_config.json for unset sampling fields (as vLLM), and the worker request. Shared by the
// OpenAI routes and the gRPC API, so both refuse the same things with the same words.
//
//   ApiResult<PreparedGeneration> prepared = PrepareGeneration(gateway, request);
//   if (!prepared.ok()) return Reply(prepared.error());
//   GenerationRun run(gateway, std::move(prepared->job));
//
// Thread-safety: thread-safe (the gateway is).
#pragma once

#include <string>
#include <vector>

#include "services/gateway/gateway.h"
#include "services/gateway/generation.h"
#include "services/gateway/openai_api.h"

namespace flotilla::gateway {

struct PreparedGeneration {
  GenerationJob job;
  Gateway::ModelProcessors processors;
  const tokenizer::Tokenizer* tokenizer = nullptr;  // null when the model folder has none (token ids only)
  bool parse_tool_calls = false;
};

ApiResult<PreparedGeneration> PrepareGeneration(Gateway& gateway, const GenerationRequest& request);

struct PreparedEmbedding {
  Gateway::ModelProcessors processors;
  std::vector<std::vector<int32_t>> token_ids;  // one row per input, truncated to max_model_len
  int prompt_tokens = 0;
};
// `task` is "embed" or "classify": the model must be served for it.
ApiResult<PreparedEmbedding> PrepareEmbedding(Gateway& gateway, const EmbeddingRequest& request, const std::string& task);

// Sends the prepared inputs to a replica of `model` (embed or classify) and returns one vector each.
absl::StatusOr<std::vector<std::vector<float>>> RunEmbedding(Gateway& gateway, const std::string& model,
                                                             const std::string& request_id,
                                                             const PreparedEmbedding& prepared);

// The API error for a model the gateway cannot take a request for: OpenAI's 404 (naming what is
// served) for an unknown one, else the status's own (503 draining or gone, 429 overloaded).
ApiError AdmissionError(Gateway& gateway, const std::string& model, const absl::Status& status);

// The text of one token as OpenAI's logprobs show it (its own decoding, special tokens kept).
std::string TokenText(const tokenizer::Tokenizer* tokenizer, int32_t token_id);

}  // namespace flotilla::gateway
