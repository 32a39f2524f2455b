// Tool calls out of generated text: the Hermes / Qwen2.5 convention, where the model writes each
// call as a JSON object between tags,
//
//   Let me look that up.
//   <tool_call>
//   {"name": "get_weather", "arguments": {"city": "Paris"}}
//   </tool_call>
//
// and the gateway returns OpenAI's `tool_calls` (finish_reason "tool_calls") instead of that text.
// Used only when a request offers tools (and tool_choice is not "none").
//
//   ParsedToolCalls parsed = ParseToolCalls(completion_text);
//   // parsed.content == "Let me look that up.\n", parsed.tool_calls[0].name == "get_weather",
//   // parsed.tool_calls[0].arguments == R"({"city":"Paris"})"
//
//   ToolCallStreamParser stream;            // the same result, fed text deltas as they are decoded
//   for (const std::string& delta : deltas) Send(stream.Feed(delta));
//   Send(stream.Finish());
//
// The rules (identical for the whole text and for any split of it into deltas):
// - Text outside the tags is content, as is. Whitespace-only text after a call (between two calls,
//   or at the end) is dropped, the way the chat template put it there.
// - A block whose inside is not a JSON object with a string "name" stays in the content verbatim,
//   tags included, and so does an unterminated `<tool_call>` at the end (a completion cut by
//   max_tokens): the client sees what the model wrote rather than losing it.
// - "arguments" may be an object (re-serialized compactly) or a string (kept); absent means "{}".
//
// Thread safety: the functions are thread-safe; a ToolCallStreamParser belongs to one stream.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace flotilla::gateway {

// One function call, as OpenAI returns it: `arguments` is a JSON text, not an object.
struct ToolCall {
  std::string id;  // "call_<24 random alphanumerics>"
  std::string name;
  std::string arguments;
};

struct ParsedToolCalls {
  std::string content;  // empty when the text held nothing but calls
  std::vector<ToolCall> tool_calls;
};

// A fresh "call_..." id.
std::string NewToolCallId();

// Parses a whole completion.
ParsedToolCalls ParseToolCalls(std::string_view text);

// The incremental form: content passes through as soon as it cannot be the start of a
// `<tool_call>` tag; each call comes out whole once its `</tool_call>` has arrived.
class ToolCallStreamParser {
 public:
  // Returns what the new text makes safe to emit: content and/or complete calls.
  ParsedToolCalls Feed(std::string_view text);
  // End of the completion: releases held-back text (a partial tag, an unterminated block).
  ParsedToolCalls Finish();
  // Calls emitted so far; a streamed delta's tool-call `index` is this count before the call.
  int num_tool_calls() const { return num_tool_calls_; }

 private:
  // Routes text that is certainly content through the whitespace-after-a-call rule.
  void EmitContent(std::string_view text, ParsedToolCalls& out);
  void Process(ParsedToolCalls& out);

  bool in_call_ = false;
  bool after_call_ = false;        // the last thing emitted was a call
  std::string buffer_;             // undecided text (outside a call) or a call's body so far
  std::string held_whitespace_;    // whitespace after a call, dropped unless content follows
  int num_tool_calls_ = 0;
};

}  // namespace flotilla::gateway
