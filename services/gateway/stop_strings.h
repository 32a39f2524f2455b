// Stop strings for streamed text: OpenAI's `stop` ends a completion at the first occurrence of any
// of its strings, and the returned text excludes the stop string and everything after it. Text
// arrives as detokenized deltas, and a stop string can straddle two of them, so the matcher holds
// back any tail of the text that could still turn into a stop string and releases it once it
// cannot (or at the end).
//
//   StopStringMatcher matcher({"\n\nUser:", "###"}, /*include_stop_string_in_output=*/false);
//   for (const std::string& delta : deltas) {
//     StopStringMatcher::Result result = matcher.Feed(delta);
//     Send(result.text);
//     if (result.stopped) { Abort(); break; }   // finish_reason "stop"
//   }
//   if (!matcher.stopped()) Send(matcher.Flush());  // the completion ended another way
//
// With include_stop_string_in_output (vLLM's extension) the stop string itself is emitted, the
// text after it still is not. Matching is on bytes; deltas must be whole UTF-8 characters (as
// IncrementalDecoder produces), and then the emitted pieces are too. When two stop strings occur,
// the one that starts first wins (the longer one on a tie).
//
// Thread safety: a matcher belongs to one choice of one request (one thread at a time).
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace flotilla::gateway {

class StopStringMatcher {
 public:
  struct Result {
    std::string text;  // safe to emit now
    bool stopped = false;
  };

  // Empty strings in `stop_strings` are ignored (the request parser rejects them).
  explicit StopStringMatcher(std::vector<std::string> stop_strings, bool include_stop_string_in_output = false);

  // Adds a delta. After a stop, further calls return nothing.
  Result Feed(std::string_view delta);
  // The held-back text, for a completion that ended without a stop string.
  std::string Flush();

  bool stopped() const { return stopped_; }
  // The stop string that matched (vLLM's `stop_reason`); empty before a match.
  const std::string& matched_stop_string() const { return matched_stop_string_; }
  // Bytes held back right now.
  size_t held_back_size() const { return pending_.size(); }

 private:
  std::vector<std::string> stop_strings_;
  bool include_stop_string_in_output_;
  std::string pending_;
  bool stopped_ = false;
  std::string matched_stop_string_;
};

}  // namespace flotilla::gateway
