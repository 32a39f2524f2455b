#include "services/gateway/tool_calls.h"

#include <random>

#include <nlohmann/json.hpp>

#include "absl/strings/ascii.h"

namespace flotilla::gateway {
namespace {

constexpr std::string_view kOpenTag = "<tool_call>";
constexpr std::string_view kCloseTag = "</tool_call>";

bool IsWhitespace(std::string_view text) {
  for (char character : text) {
    if (!absl::ascii_isspace(static_cast<unsigned char>(character))) return false;
  }
  return true;
}

// Length of the longest suffix of `text` that is a proper prefix of `tag`: text that might still
// become the tag once more arrives.
size_t PartialTagSuffix(std::string_view text, std::string_view tag) {
  for (size_t length = std::min(text.size(), tag.size() - 1); length > 0; --length) {
    if (text.substr(text.size() - length) == tag.substr(0, length)) return length;
  }
  return 0;
}

// The call inside one block, or false when the block is not a well-formed call.
bool ParseCallBody(std::string_view body, ToolCall& call) {
  const nlohmann::ordered_json parsed = nlohmann::ordered_json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (parsed.is_discarded() || !parsed.is_object()) return false;
  auto name = parsed.find("name");
  if (name == parsed.end() || !name->is_string() || name->get_ref<const std::string&>().empty()) return false;
  call.name = name->get<std::string>();
  auto arguments = parsed.find("arguments");
  if (arguments == parsed.end() || arguments->is_null()) {
    call.arguments = "{}";
  } else if (arguments->is_string()) {
    call.arguments = arguments->get<std::string>();
  } else {
    call.arguments = arguments->dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
  }
  call.id = NewToolCallId();
  return true;
}

void Append(ParsedToolCalls& into, ParsedToolCalls&& from) {
  into.content += from.content;
  for (ToolCall& call : from.tool_calls) into.tool_calls.push_back(std::move(call));
}

}  // namespace

std::string NewToolCallId() {
  static constexpr char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
  thread_local std::mt19937_64 generator{std::random_device{}()};
  std::uniform_int_distribution<size_t> pick(0, sizeof(kAlphabet) - 2);
  std::string id = "call_";
  for (int i = 0; i < 24; ++i) id += kAlphabet[pick(generator)];
  return id;
}

ParsedToolCalls ParseToolCalls(std::string_view text) {
  ToolCallStreamParser parser;
  ParsedToolCalls result = parser.Feed(text);
  Append(result, parser.Finish());
  return result;
}

void ToolCallStreamParser::EmitContent(std::string_view text, ParsedToolCalls& out) {
  if (text.empty()) return;
  if (after_call_) {
    held_whitespace_ += text;
    if (IsWhitespace(held_whitespace_)) return;
    out.content += held_whitespace_;
    held_whitespace_.clear();
    after_call_ = false;
    return;
  }
  out.content += text;
}

void ToolCallStreamParser::Process(ParsedToolCalls& out) {
  while (true) {
    if (!in_call_) {
      const size_t open = buffer_.find(kOpenTag);
      if (open == std::string::npos) {
        const size_t keep = PartialTagSuffix(buffer_, kOpenTag);
        EmitContent(std::string_view(buffer_).substr(0, buffer_.size() - keep), out);
        buffer_.erase(0, buffer_.size() - keep);
        return;
      }
      EmitContent(std::string_view(buffer_).substr(0, open), out);
      // Whitespace between two calls goes with the template, not the content.
      if (after_call_) held_whitespace_.clear();
      buffer_.erase(0, open + kOpenTag.size());
      in_call_ = true;
    }
    const size_t close = buffer_.find(kCloseTag);
    if (close == std::string::npos) return;
    ToolCall call;
    const std::string_view body = std::string_view(buffer_).substr(0, close);
    if (ParseCallBody(body, call)) {
      held_whitespace_.clear();
      out.tool_calls.push_back(std::move(call));
      ++num_tool_calls_;
      after_call_ = true;
    } else {
      EmitContent(std::string(kOpenTag) + std::string(body) + std::string(kCloseTag), out);
    }
    buffer_.erase(0, close + kCloseTag.size());
    in_call_ = false;
  }
}

ParsedToolCalls ToolCallStreamParser::Feed(std::string_view text) {
  ParsedToolCalls out;
  buffer_ += text;
  Process(out);
  return out;
}

ParsedToolCalls ToolCallStreamParser::Finish() {
  ParsedToolCalls out;
  if (in_call_) {
    EmitContent(std::string(kOpenTag) + buffer_, out);
  } else {
    EmitContent(buffer_, out);
  }
  buffer_.clear();
  in_call_ = false;
  held_whitespace_.clear();
  return out;
}

}  // namespace flotilla::gateway
