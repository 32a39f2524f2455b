#include "services/gateway/openai_api.h"

#include <string>

#include "gtest/gtest.h"

namespace flotilla::gateway {
namespace {

using json = nlohmann::ordered_json;

// Parses a chat body expected to fail and returns the error.
ApiError ChatError(const json& body) {
  ApiResult<GenerationRequest> result = ParseChatCompletionRequest(body.dump());
  EXPECT_FALSE(result.ok()) << body.dump();
  return result.ok() ? ApiError{} : result.error();
}

ApiError CompletionError(const json& body) {
  ApiResult<GenerationRequest> result = ParseCompletionRequest(body.dump());
  EXPECT_FALSE(result.ok()) << body.dump();
  return result.ok() ? ApiError{} : result.error();
}

json Chat(json extra = json::object()) {
  json body = {{"model", "smollm2"}, {"messages", {{{"role", "user"}, {"content", "Hi"}}}}};
  body.update(extra);
  return body;
}

json Completion(json extra = json::object()) {
  json body = {{"model", "smollm2"}, {"prompt", "Once upon"}};
  body.update(extra);
  return body;
}

TEST(ParseChatCompletionRequestTest, MinimalRequestTakesDefaults) {
  ApiResult<GenerationRequest> request = ParseChatCompletionRequest(Chat().dump());
  ASSERT_TRUE(request.ok()) << request.error().message;
  EXPECT_EQ(request->model, "smollm2");
  EXPECT_EQ(request->endpoint, Endpoint::kChatCompletions);
  EXPECT_EQ(*request->messages, json::parse(R"([{"role": "user", "content": "Hi"}])"));
  EXPECT_EQ(request->n, 1);
  EXPECT_FALSE(request->max_tokens.has_value());
  EXPECT_FALSE(request->temperature.has_value());
  EXPECT_FALSE(request->stream);
  EXPECT_TRUE(request->add_generation_prompt);
  EXPECT_EQ(request->tool_choice, "none");
  EXPECT_FALSE(request->ParsesToolCalls());
}

TEST(ParseChatCompletionRequestTest, EveryFieldAndExtension) {
  json body = Chat({{"max_completion_tokens", 32},
                    {"max_tokens", 99},
                    {"temperature", 0.5},
                    {"top_p", 0.9},
                    {"n", 2},
                    {"stop", {"###", "\n\n"}},
                    {"seed", 7},
                    {"stream", true},
                    {"stream_options", {{"include_usage", true}}},
                    {"logprobs", true},
                    {"top_logprobs", 3},
                    {"presence_penalty", 0.5},
                    {"frequency_penalty", -0.5},
                    {"logit_bias", {{"42", -100}, {"7", 2.5}}},
                    {"user", "someone"},
                    {"metadata", {{"k", "v"}}},
                    {"store", false},
                    {"service_tier", "auto"},
                    {"parallel_tool_calls", true},
                    {"response_format", {{"type", "text"}}},
                    {"top_k", 20},
                    {"min_p", 0.05},
                    {"repetition_penalty", 1.1},
                    {"min_tokens", 2},
                    {"ignore_eos", true},
                    {"priority", -1},
                    {"stop_token_ids", {2, 3}},
                    {"skip_special_tokens", false},
                    {"include_stop_str_in_output", true},
                    {"add_generation_prompt", true},
                    {"chat_template_kwargs", {{"enable_thinking", false}}},
                    {"request_id", "req-1"},
                    {"spaces_between_special_tokens", true},
                    {"use_beam_search", false}});
  ApiResult<GenerationRequest> request = ParseChatCompletionRequest(body.dump());
  ASSERT_TRUE(request.ok()) << request.error().message;
  EXPECT_EQ(request->max_tokens, 32);  // max_completion_tokens wins over the deprecated name
  EXPECT_FLOAT_EQ(*request->temperature, 0.5f);
  EXPECT_FLOAT_EQ(*request->top_p, 0.9f);
  EXPECT_EQ(request->n, 2);
  EXPECT_EQ(request->stop, (std::vector<std::string>{"###", "\n\n"}));
  EXPECT_EQ(request->seed, 7);
  EXPECT_TRUE(request->stream);
  EXPECT_TRUE(request->include_usage);
  EXPECT_TRUE(request->logprobs);
  EXPECT_EQ(request->top_logprobs, 3);
  EXPECT_FLOAT_EQ(request->presence_penalty, 0.5f);
  EXPECT_FLOAT_EQ(request->frequency_penalty, -0.5f);
  EXPECT_EQ(request->logit_bias.size(), 2u);
  EXPECT_FLOAT_EQ(request->logit_bias.at(42), -100.0f);
  EXPECT_FLOAT_EQ(request->logit_bias.at(7), 2.5f);
  EXPECT_EQ(request->top_k, 20);
  EXPECT_FLOAT_EQ(*request->min_p, 0.05f);
  EXPECT_FLOAT_EQ(*request->repetition_penalty, 1.1f);
  EXPECT_EQ(request->min_tokens, 2);
  EXPECT_TRUE(request->ignore_eos);
  EXPECT_EQ(request->priority, -1);
  EXPECT_EQ(request->stop_token_ids, (std::vector<int32_t>{2, 3}));
  EXPECT_FALSE(request->skip_special_tokens);
  EXPECT_TRUE(request->include_stop_str_in_output);
  EXPECT_EQ(request->chat_template_kwargs, json({{"enable_thinking", false}}));
  EXPECT_EQ(request->request_id, "req-1");
}

TEST(ParseChatCompletionRequestTest, MaxTokensAloneIsUsedAndNullsAreUnset) {
  ApiResult<GenerationRequest> request =
      ParseChatCompletionRequest(Chat({{"max_tokens", 5}, {"temperature", nullptr}, {"stop", nullptr}}).dump());
  ASSERT_TRUE(request.ok()) << request.error().message;
  EXPECT_EQ(request->max_tokens, 5);
  EXPECT_FALSE(request->temperature.has_value());
  EXPECT_TRUE(request->stop.empty());
  request = ParseChatCompletionRequest(Chat({{"stop", "END"}, {"n", 3.0}}).dump());
  ASSERT_TRUE(request.ok()) << request.error().message;
  EXPECT_EQ(request->stop, std::vector<std::string>{"END"});
  EXPECT_EQ(request->n, 3);  // an integral float is an integer, as pydantic accepts
}

TEST(ParseChatCompletionRequestTest, ContentPartsAreJoinedAndToolCallArgumentsParsed) {
  json messages = json::parse(R"([
    {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
    {"role": "user", "content": [{"type": "text", "text": "Line one"}, {"type": "text", "text": "Line two"}], "name": "ann"},
    {"role": "assistant", "content": null,
     "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"x\": 1}"}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "42"}
  ])");
  ApiResult<GenerationRequest> request = ParseChatCompletionRequest(Chat({{"messages", messages}}).dump());
  ASSERT_TRUE(request.ok()) << request.error().message;
  const json& normalized = *request->messages;
  EXPECT_EQ(normalized[0]["content"], "Be brief.");
  EXPECT_EQ(normalized[1]["content"], "Line one\nLine two");
  EXPECT_EQ(normalized[1]["name"], "ann");
  EXPECT_TRUE(normalized[2]["content"].is_null());
  EXPECT_EQ(normalized[2]["tool_calls"][0]["function"]["arguments"], json({{"x", 1}}));
  EXPECT_EQ(normalized[3]["tool_call_id"], "call_1");
}

TEST(ParseChatCompletionRequestTest, Tools) {
  json tools = json::parse(R"([{"type": "function", "function": {"name": "get_weather",
      "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}])");
  ApiResult<GenerationRequest> request = ParseChatCompletionRequest(Chat({{"tools", tools}}).dump());
  ASSERT_TRUE(request.ok()) << request.error().message;
  EXPECT_EQ(request->tools, tools);
  EXPECT_EQ(request->tool_choice, "auto");
  EXPECT_TRUE(request->ParsesToolCalls());
  request = ParseChatCompletionRequest(Chat({{"tools", tools}, {"tool_choice", "none"}}).dump());
  ASSERT_TRUE(request.ok());
  EXPECT_FALSE(request->ParsesToolCalls());

  EXPECT_EQ(ChatError(Chat({{"tools", tools}, {"tool_choice", "required"}})).param, "tool_choice");
  EXPECT_EQ(ChatError(Chat({{"tools", tools}, {"tool_choice", {{"type", "function"},
                                                                  {"function", {{"name", "get_weather"}}}}}}))
                .param,
            "tool_choice");
  EXPECT_EQ(ChatError(Chat({{"tool_choice", "auto"}})).param, "tool_choice");
  EXPECT_EQ(ChatError(Chat({{"tools", {{{"type", "custom"}}}}})).param, "tools[0].type");
  EXPECT_EQ(ChatError(Chat({{"tools", {{{"type", "function"}, {"function", json::object()}}}}})).param,
            "tools[0].function.name");
}

TEST(ParseChatCompletionRequestTest, MalformedJsonAndWrongBody) {
  ApiResult<GenerationRequest> request = ParseChatCompletionRequest("{\"model\": ");
  ASSERT_FALSE(request.ok());
  EXPECT_EQ(request.error().http_status, 400);
  EXPECT_NE(request.error().message.find("could not parse the JSON body"), std::string::npos);
  request = ParseChatCompletionRequest("[1, 2]");
  ASSERT_FALSE(request.ok());
  EXPECT_NE(request.error().message.find("expected a JSON object"), std::string::npos);
}

TEST(ParseChatCompletionRequestTest, MissingAndWrongTypedFields) {
  ApiError error = ChatError({{"messages", {{{"role", "user"}, {"content", "x"}}}}});
  EXPECT_EQ(error.param, "model");
  EXPECT_EQ(error.message, "you must provide a model parameter");
  EXPECT_EQ(ChatError({{"model", "m"}}).param, "messages");
  EXPECT_EQ(ChatError(Chat({{"messages", json::array()}})).param, "messages");
  EXPECT_EQ(ChatError(Chat({{"model", 3}})).param, "model");
  error = ChatError(Chat({{"temperature", "hot"}}));
  EXPECT_EQ(error.param, "temperature");
  EXPECT_EQ(error.message, "Invalid type for 'temperature': expected a number, but got a string instead.");
  EXPECT_EQ(ChatError(Chat({{"n", 1.5}})).param, "n");
  EXPECT_EQ(ChatError(Chat({{"stream", "yes"}})).param, "stream");
  EXPECT_EQ(ChatError(Chat({{"stop", 5}})).param, "stop");
  EXPECT_EQ(ChatError(Chat({{"stop", {"a", 1}}})).param, "stop[1]");
  EXPECT_EQ(ChatError(Chat({{"logprobs", 1}})).param, "logprobs");
}

TEST(ParseChatCompletionRequestTest, RangeChecks) {
  ApiError error = ChatError(Chat({{"max_tokens", 0}}));
  EXPECT_EQ(error.param, "max_tokens");
  EXPECT_EQ(error.message, "Invalid 'max_tokens': value below minimum. Expected a value >= 1, but got 0 instead.");
  EXPECT_EQ(ChatError(Chat({{"max_completion_tokens", -3}})).param, "max_completion_tokens");
  EXPECT_EQ(ChatError(Chat({{"n", 0}})).param, "n");
  EXPECT_EQ(ChatError(Chat({{"n", kMaxChoices + 1}})).param, "n");
  error = ChatError(Chat({{"temperature", 2.5}}));
  EXPECT_EQ(error.message, "Invalid 'temperature': value above maximum. Expected a value <= 2, but got 2.5 instead.");
  EXPECT_EQ(ChatError(Chat({{"temperature", -0.1}})).param, "temperature");
  EXPECT_EQ(ChatError(Chat({{"top_p", 0}})).param, "top_p");
  EXPECT_EQ(ChatError(Chat({{"top_p", 1.01}})).param, "top_p");
  EXPECT_EQ(ChatError(Chat({{"presence_penalty", 2.5}})).param, "presence_penalty");
  EXPECT_EQ(ChatError(Chat({{"frequency_penalty", -3}})).param, "frequency_penalty");
  EXPECT_EQ(ChatError(Chat({{"top_k", -2}})).param, "top_k");
  EXPECT_EQ(ChatError(Chat({{"min_p", 1.5}})).param, "min_p");
  EXPECT_EQ(ChatError(Chat({{"repetition_penalty", 0}})).param, "repetition_penalty");
  EXPECT_EQ(ChatError(Chat({{"min_tokens", 10}, {"max_tokens", 5}})).param, "min_tokens");
  EXPECT_EQ(ChatError(Chat({{"stop", {""}}})).param, "stop");
  EXPECT_EQ(ChatError(Chat({{"stop", std::vector<std::string>(kMaxStopStrings + 1, "x")}})).param, "stop");
  EXPECT_EQ(ChatError(Chat({{"stop_token_ids", {-1}}})).param, "stop_token_ids[0]");
}

TEST(ParseChatCompletionRequestTest, Logprobs) {
  EXPECT_EQ(ChatError(Chat({{"logprobs", true}, {"top_logprobs", 21}})).param, "top_logprobs");
  ApiError error = ChatError(Chat({{"top_logprobs", 2}}));
  EXPECT_EQ(error.param, "top_logprobs");
  EXPECT_NE(error.message.find("'logprobs' must be set to true"), std::string::npos);
  EXPECT_TRUE(ParseChatCompletionRequest(Chat({{"top_logprobs", 0}}).dump()).ok());
}

TEST(ParseChatCompletionRequestTest, LogitBias) {
  ApiError error = ChatError(Chat({{"logit_bias", {{"abc", 1}}}}));
  EXPECT_EQ(error.param, "logit_bias");
  EXPECT_NE(error.message.find("'abc'"), std::string::npos);
  EXPECT_EQ(ChatError(Chat({{"logit_bias", {{"-4", 1}}}})).param, "logit_bias");
  EXPECT_EQ(ChatError(Chat({{"logit_bias", {{"5", 101}}}})).param, "logit_bias.5");
  EXPECT_EQ(ChatError(Chat({{"logit_bias", {{"5", -100.5}}}})).param, "logit_bias.5");
  EXPECT_EQ(ChatError(Chat({{"logit_bias", {{"5", "x"}}}})).param, "logit_bias.5");
  EXPECT_EQ(ChatError(Chat({{"logit_bias", {1, 2}}})).param, "logit_bias");
}

TEST(ParseChatCompletionRequestTest, Messages) {
  ApiError error = ChatError(Chat({{"messages", {{{"role", "wizard"}, {"content", "x"}}}}}));
  EXPECT_EQ(error.param, "messages[0].role");
  EXPECT_NE(error.message.find("'wizard' is not one of"), std::string::npos);
  EXPECT_EQ(ChatError(Chat({{"messages", {{{"content", "x"}}}}})).param, "messages[0].role");
  EXPECT_EQ(ChatError(Chat({{"messages", {{{"role", "user"}}}}})).param, "messages[0].content");
  EXPECT_EQ(ChatError(Chat({{"messages", {"hello"}}})).param, "messages[0]");
  EXPECT_EQ(ChatError(Chat({{"messages", {{{"role", "user"}, {"content", 5}}}}})).param, "messages[0].content");
  error = ChatError(Chat({{"messages", json::parse(R"([{"role": "user", "content": [{"type": "text", "text": "a"},
      {"type": "image_url", "image_url": {"url": "http://x/cat.png"}}]}])")}}));
  EXPECT_EQ(error.param, "messages[0].content[1].type");
  EXPECT_NE(error.message.find("not supported"), std::string::npos);
  EXPECT_EQ(ChatError(Chat({{"messages", json::parse(R"([{"role": "user", "content": [{"type": "text"}]}])")}}))
                .param,
            "messages[0].content[0].text");
}

TEST(ParseChatCompletionRequestTest, UnknownAndUnsupportedFields) {
  ApiError error = ChatError(Chat({{"frobnicate", 1}}));
  EXPECT_EQ(error.http_status, 400);
  EXPECT_EQ(error.message, "Unrecognized request argument supplied: frobnicate");
  EXPECT_EQ(error.type, "invalid_request_error");
  error = ChatError(Chat({{"stream_options", {{"include_usage", true}}}}));
  EXPECT_EQ(error.param, "stream_options");
  EXPECT_EQ(error.message, "Stream options can only be defined when `stream=True`.");
  EXPECT_EQ(ChatError(Chat({{"stream", true}, {"stream_options", {{"bogus", true}}}})).param, "stream_options");
  EXPECT_EQ(ChatError(Chat({{"response_format", {{"type", "json_object"}}}})).param, "response_format.type");
  EXPECT_EQ(ChatError(Chat({{"functions", {{{"name", "f"}}}}})).param, "functions");
  EXPECT_EQ(ChatError(Chat({{"use_beam_search", true}})).param, "use_beam_search");
  EXPECT_EQ(ChatError(Chat({{"echo", true}})).param, "echo");
  EXPECT_EQ(ChatError(Chat({{"chat_template", "{{ x }}"}})).param, "chat_template");
  EXPECT_EQ(ChatError(Chat({{"continue_final_message", true}, {"add_generation_prompt", true}})).param,
            "continue_final_message");
  ApiResult<GenerationRequest> request = ParseChatCompletionRequest(Chat({{"continue_final_message", true}}).dump());
  ASSERT_TRUE(request.ok());
  EXPECT_FALSE(request->add_generation_prompt);
}

TEST(ParseCompletionRequestTest, PromptForms) {
  ApiResult<GenerationRequest> request = ParseCompletionRequest(Completion().dump());
  ASSERT_TRUE(request.ok()) << request.error().message;
  EXPECT_EQ(request->endpoint, Endpoint::kCompletions);
  EXPECT_EQ(request->prompt, "Once upon");
  EXPECT_EQ(request->max_tokens, kDefaultCompletionMaxTokens);
  request = ParseCompletionRequest(Completion({{"prompt", {"only one"}}}).dump());
  ASSERT_TRUE(request.ok());
  EXPECT_EQ(request->prompt, "only one");
  request = ParseCompletionRequest(Completion({{"prompt", {1, 2, 3}}}).dump());
  ASSERT_TRUE(request.ok());
  EXPECT_FALSE(request->prompt.has_value());
  EXPECT_EQ(*request->prompt_token_ids, (std::vector<int32_t>{1, 2, 3}));
  request = ParseCompletionRequest(Completion({{"prompt", {{4, 5}}}}).dump());
  ASSERT_TRUE(request.ok());
  EXPECT_EQ(*request->prompt_token_ids, (std::vector<int32_t>{4, 5}));

  EXPECT_EQ(CompletionError({{"model", "m"}}).param, "prompt");
  EXPECT_EQ(CompletionError(Completion({{"prompt", json::array()}})).param, "prompt");
  EXPECT_EQ(CompletionError(Completion({{"prompt", {"a", "b"}}})).param, "prompt");
  EXPECT_EQ(CompletionError(Completion({{"prompt", {{1}, {2}}}})).param, "prompt");
  EXPECT_EQ(CompletionError(Completion({{"prompt", {1, -2}}})).param, "prompt[1]");
  EXPECT_EQ(CompletionError(Completion({{"prompt", 5}})).param, "prompt");
}

TEST(ParseCompletionRequestTest, LogprobsEchoAndFields) {
  ApiResult<GenerationRequest> request =
      ParseCompletionRequest(Completion({{"logprobs", 2}, {"max_tokens", 8}, {"best_of", 1}}).dump());
  ASSERT_TRUE(request.ok()) << request.error().message;
  EXPECT_TRUE(request->logprobs);
  EXPECT_EQ(request->top_logprobs, 2);
  EXPECT_EQ(request->max_tokens, 8);
  request = ParseCompletionRequest(Completion({{"logprobs", 0}}).dump());
  ASSERT_TRUE(request.ok());
  EXPECT_TRUE(request->logprobs);
  EXPECT_EQ(CompletionError(Completion({{"logprobs", 6}})).param, "logprobs");
  EXPECT_EQ(CompletionError(Completion({{"logprobs", true}})).param, "logprobs");
  EXPECT_EQ(CompletionError(Completion({{"echo", true}})).param, "echo");
  EXPECT_TRUE(ParseCompletionRequest(Completion({{"echo", false}}).dump()).ok());
  EXPECT_EQ(CompletionError(Completion({{"suffix", "end"}})).param, "suffix");
  EXPECT_EQ(CompletionError(Completion({{"best_of", 3}})).param, "best_of");
  EXPECT_EQ(CompletionError(Completion({{"max_tokens", 0}})).param, "max_tokens");
  // Chat-only fields are unknown here, as OpenAI answers.
  EXPECT_EQ(CompletionError(Completion({{"messages", json::array()}})).message,
            "Unrecognized request argument supplied: messages");
  EXPECT_EQ(CompletionError(Completion({{"tools", json::array()}})).message,
            "Unrecognized request argument supplied: tools");
}

TEST(ParseEmbeddingRequestTest, InputForms) {
  ApiResult<EmbeddingRequest> request = ParseEmbeddingRequest(R"({"model": "e", "input": "a"})");
  ASSERT_TRUE(request.ok()) << request.error().message;
  EXPECT_EQ(request->texts, std::vector<std::string>{"a"});
  EXPECT_EQ(request->encoding_format, EncodingFormat::kFloat);
  request = ParseEmbeddingRequest(R"({"model": "e", "input": ["a", "b"], "encoding_format": "base64", "user": "u"})");
  ASSERT_TRUE(request.ok());
  EXPECT_EQ(request->texts.size(), 2u);
  EXPECT_EQ(request->encoding_format, EncodingFormat::kBase64);
  request = ParseEmbeddingRequest(R"({"model": "e", "input": [1, 2]})");
  ASSERT_TRUE(request.ok());
  EXPECT_EQ(request->token_ids, (std::vector<std::vector<int32_t>>{{1, 2}}));
  request = ParseEmbeddingRequest(R"({"model": "e", "input": [[1], [2, 3]], "dimensions": 384})");
  ASSERT_TRUE(request.ok());
  EXPECT_EQ(request->token_ids.size(), 2u);
  EXPECT_FALSE(CheckEmbeddingDimensions(*request, 384).has_value());
  std::optional<ApiError> error = CheckEmbeddingDimensions(*request, 768);
  ASSERT_TRUE(error.has_value());
  EXPECT_EQ(error->param, "dimensions");
}

TEST(ParseEmbeddingRequestTest, Errors) {
  auto param = [](std::string_view body) {
    ApiResult<EmbeddingRequest> request = ParseEmbeddingRequest(body);
    EXPECT_FALSE(request.ok()) << body;
    return request.ok() ? std::string("<ok>") : request.error().param;
  };
  EXPECT_EQ(param(R"({"input": "a"})"), "model");
  EXPECT_EQ(param(R"({"model": "e"})"), "input");
  EXPECT_EQ(param(R"({"model": "e", "input": []})"), "input");
  EXPECT_EQ(param(R"({"model": "e", "input": [""]})"), "input");
  EXPECT_EQ(param(R"({"model": "e", "input": ["a", 1]})"), "input[1]");
  EXPECT_EQ(param(R"({"model": "e", "input": 5})"), "input");
  EXPECT_EQ(param(R"({"model": "e", "input": "a", "encoding_format": "int8"})"), "encoding_format");
  EXPECT_EQ(param(R"({"model": "e", "input": "a", "dimensions": 0})"), "dimensions");
  EXPECT_EQ(param(R"({"model": "e", "input": "a", "bogus": 0})"), "");
}

TEST(ApiErrorTest, RendersOpenAiShape) {
  EXPECT_EQ(RenderError(InvalidRequestError("Unrecognized request argument supplied: x")),
            json::parse(R"({"error": {"message": "Unrecognized request argument supplied: x",
                "type": "invalid_request_error", "param": null, "code": null}})"));
  ApiError not_found = ModelNotFoundError("gpt-9");
  EXPECT_EQ(not_found.http_status, 404);
  EXPECT_EQ(RenderError(not_found), json::parse(R"({"error": {"message": "The model `gpt-9` does not exist.",
                "type": "invalid_request_error", "param": "model", "code": "model_not_found"}})"));
  EXPECT_EQ(SseErrorEvent(not_found), "data: " + RenderError(not_found).dump() + "\n\n");
}

TEST(ApiErrorTest, StatusMapping) {
  EXPECT_EQ(ApiErrorFromStatus(absl::InvalidArgumentError("x")).http_status, 400);
  EXPECT_EQ(ApiErrorFromStatus(absl::NotFoundError("x")).http_status, 404);
  EXPECT_EQ(ApiErrorFromStatus(absl::ResourceExhaustedError("x")).http_status, 429);
  ApiError unavailable = ApiErrorFromStatus(absl::UnavailableError("no replica"));
  EXPECT_EQ(unavailable.http_status, 503);
  EXPECT_EQ(unavailable.type, "server_error");
  EXPECT_EQ(unavailable.message, "no replica");
  EXPECT_EQ(ApiErrorFromStatus(absl::InternalError("x")).http_status, 500);
  EXPECT_EQ(StatusFromApiError(InvalidRequestError("bad")), absl::InvalidArgumentError("bad"));
  EXPECT_EQ(StatusFromApiError(ModelNotFoundError("m")).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(StatusFromApiError(unavailable).code(), absl::StatusCode::kUnavailable);
}

const ResponseContext kChat{"chatcmpl-abc", "smollm2", 1700000000};
const ResponseContext kCompletion{"cmpl-abc", "smollm2", 1700000000};

TEST(RenderTest, Ids) {
  const std::string id = NewResponseId(Endpoint::kChatCompletions);
  EXPECT_EQ(id.rfind("chatcmpl-", 0), 0u);
  EXPECT_EQ(id.size(), 9u + 32u);
  EXPECT_NE(id, NewResponseId(Endpoint::kChatCompletions));
  EXPECT_EQ(NewResponseId(Endpoint::kCompletions).rfind("cmpl-", 0), 0u);
  EXPECT_EQ(NewEmbeddingId().rfind("embd-", 0), 0u);
}

TEST(RenderTest, ChatCompletion) {
  ChoiceResult choice{.index = 0, .text = "Hello!", .finish_reason = "stop"};
  EXPECT_EQ(RenderChatCompletion(kChat, {choice}, Usage{5, 2}), json::parse(R"({
    "id": "chatcmpl-abc", "object": "chat.completion", "created": 1700000000, "model": "smollm2",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello!"}, "logprobs": null,
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}})"));
}

TEST(RenderTest, ChatCompletionWithToolCallsAndLogprobs) {
  ChoiceResult choice{.index = 0, .text = "", .finish_reason = "tool_calls", .has_logprobs = true};
  choice.logprobs.push_back({.token = "é", .logprob = -0.5f, .top_logprobs = {{"é", -0.5f}, {"e", -1.0f}}});
  choice.tool_calls.push_back({.id = "call_1", .name = "f", .arguments = R"({"x":1})"});
  EXPECT_EQ(RenderChatCompletion(kChat, {choice}, Usage{1, 1})["choices"][0], json::parse(R"({
    "index": 0,
    "message": {"role": "assistant", "content": null,
                "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"x\":1}"}}]},
    "logprobs": {"content": [{"token": "é", "bytes": [195, 169], "logprob": -0.5,
                              "top_logprobs": [{"token": "é", "bytes": [195, 169], "logprob": -0.5},
                                               {"token": "e", "bytes": [101], "logprob": -1.0}]}]},
    "finish_reason": "tool_calls"})"));
}

TEST(RenderTest, ChatStreamChunksInVllmOrder) {
  EXPECT_EQ(RenderChatRoleChunk(kChat, 0), json::parse(R"({
    "id": "chatcmpl-abc", "object": "chat.completion.chunk", "created": 1700000000, "model": "smollm2",
    "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}]})"));
  const json content = RenderChatContentChunk(kChat, 1, "Hel");
  EXPECT_EQ(content, json::parse(R"({
    "id": "chatcmpl-abc", "object": "chat.completion.chunk", "created": 1700000000, "model": "smollm2",
    "choices": [{"index": 1, "delta": {"content": "Hel"}, "logprobs": null, "finish_reason": null}]})"));
  EXPECT_FALSE(content.contains("usage"));
  const json finish = RenderChatFinishChunk(kChat, 0, "length");
  EXPECT_EQ(finish["choices"][0], json::parse(R"({"index": 0, "delta": {}, "logprobs": null, "finish_reason": "length"})"));
  EXPECT_FALSE(finish.contains("usage"));
  EXPECT_EQ(RenderChatUsageChunk(kChat, Usage{3, 4}), json::parse(R"({
    "id": "chatcmpl-abc", "object": "chat.completion.chunk", "created": 1700000000, "model": "smollm2",
    "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}})"));
  const Usage running{3, 1};
  EXPECT_EQ(RenderChatContentChunk(kChat, 0, "x", nullptr, &running)["usage"]["total_tokens"], 4);
  EXPECT_EQ(RenderChatToolCallChunk(kChat, 0, 1, {.id = "call_2", .name = "g", .arguments = "{}"})["choices"][0],
            json::parse(R"({"index": 0, "delta": {"tool_calls": [{"id": "call_2", "type": "function",
                "function": {"name": "g", "arguments": "{}"}, "index": 1}]}, "logprobs": null, "finish_reason": null})"));
}

TEST(RenderTest, Completion) {
  ChoiceResult choice{.index = 0, .text = " a time", .finish_reason = "length", .has_logprobs = true};
  choice.logprobs.push_back({.token = " a", .logprob = -0.25f, .top_logprobs = {{" a", -0.25f}, {" the", -2.0f}}});
  choice.logprobs.push_back({.token = " time", .logprob = -std::numeric_limits<float>::infinity()});
  EXPECT_EQ(RenderCompletion(kCompletion, {choice}, Usage{2, 2}), json::parse(R"({
    "id": "cmpl-abc", "object": "text_completion", "created": 1700000000, "model": "smollm2",
    "choices": [{"index": 0, "text": " a time",
                 "logprobs": {"tokens": [" a", " time"], "token_logprobs": [-0.25, -9999.0],
                              "top_logprobs": [{" a": -0.25, " the": -2.0}, null], "text_offset": [0, 2]},
                 "finish_reason": "length"}],
    "usage": {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4}})"));
}

TEST(RenderTest, CompletionStream) {
  std::vector<TokenLogprob> logprobs = {{.token = "b", .logprob = -1.0f}};
  EXPECT_EQ(RenderCompletionChunk(kCompletion, 0, "b", "", &logprobs, 7), json::parse(R"({
    "id": "cmpl-abc", "object": "text_completion", "created": 1700000000, "model": "smollm2",
    "choices": [{"index": 0, "text": "b",
                 "logprobs": {"tokens": ["b"], "token_logprobs": [-1.0], "top_logprobs": [null], "text_offset": [7]},
                 "finish_reason": null}]})"));
  const json last = RenderCompletionChunk(kCompletion, 0, "", "stop");
  EXPECT_EQ(last["choices"][0]["finish_reason"], "stop");
  EXPECT_FALSE(last.contains("usage"));
  EXPECT_EQ(RenderCompletionUsageChunk(kCompletion, Usage{1, 2}), json::parse(R"({
    "id": "cmpl-abc", "object": "text_completion", "created": 1700000000, "model": "smollm2",
    "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}})"));
}

TEST(RenderTest, Embeddings) {
  const ResponseContext context{"embd-1", "minilm", 5};
  EXPECT_EQ(RenderEmbeddings(context, {{1.0f, -2.0f}}, EncodingFormat::kFloat, 3), json::parse(R"({
    "id": "embd-1", "object": "list", "created": 5, "model": "minilm",
    "data": [{"object": "embedding", "index": 0, "embedding": [1.0, -2.0]}],
    "usage": {"prompt_tokens": 3, "total_tokens": 3}})"));
  // 1.0f = 00 00 80 3f, -2.0f = 00 00 00 c0 (little-endian float32).
  EXPECT_EQ(RenderEmbeddings(context, {{1.0f, -2.0f}}, EncodingFormat::kBase64, 3)["data"][0]["embedding"],
            "AACAPwAAAMA=");
}

TEST(RenderTest, ModelList) {
  EXPECT_EQ(RenderModelList({{.id = "smollm2", .created = 9, .max_model_len = 8192, .root = "acme/smollm2@main"}}),
            json::parse(R"({"object": "list", "data": [{"id": "smollm2", "object": "model", "created": 9,
                "owned_by": "flotilla", "root": "acme/smollm2@main", "max_model_len": 8192}]})"));
}

TEST(SseTest, Framing) {
  EXPECT_EQ(SseEvent(json{{"a", 1}}), "data: {\"a\":1}\n\n");
  EXPECT_EQ(kSseDone, "data: [DONE]\n\n");
  // Half a character (a byte-level token) must not make the stream throw.
  EXPECT_EQ(SseEvent(json{{"t", std::string("\xe2\x80")}}), "data: {\"t\":\"\xef\xbf\xbd\"}\n\n");
  EXPECT_EQ(DumpJson(json{{"t", "é"}}), "{\"t\":\"é\"}");
}

}  // namespace
}  // namespace flotilla::gateway
