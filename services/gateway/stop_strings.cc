#include "services/gateway/stop_strings.h"

#include <algorithm>
#include <utility>

namespace flotilla::gateway {

StopStringMatcher::StopStringMatcher(std::vector<std::string> stop_strings, bool include_stop_string_in_output)
    : include_stop_string_in_output_(include_stop_string_in_output) {
  for (std::string& stop_string : stop_strings) {
    if (!stop_string.empty()) stop_strings_.push_back(std::move(stop_string));
  }
}

StopStringMatcher::Result StopStringMatcher::Feed(std::string_view delta) {
  Result result;
  if (stopped_) return result;
  pending_ += delta;
  if (stop_strings_.empty()) {
    result.text = std::move(pending_);
    pending_.clear();
    return result;
  }
  // Earliest match; `pending_` never holds a whole stop string from an earlier call, so searching
  // all of it finds every match that involves the new delta.
  size_t best_position = std::string::npos;
  const std::string* best = nullptr;
  for (const std::string& stop_string : stop_strings_) {
    const size_t position = pending_.find(stop_string);
    if (position == std::string::npos) continue;
    if (position < best_position || (position == best_position && stop_string.size() > best->size())) {
      best_position = position;
      best = &stop_string;
    }
  }
  if (best != nullptr) {
    const size_t end = best_position + (include_stop_string_in_output_ ? best->size() : 0);
    result.text = pending_.substr(0, end);
    result.stopped = true;
    stopped_ = true;
    matched_stop_string_ = *best;
    pending_.clear();
    return result;
  }
  // Hold back the longest tail that is a proper prefix of some stop string. A stop string starts
  // with a whole UTF-8 character, so the cut falls on a character boundary.
  size_t hold = 0;
  for (const std::string& stop_string : stop_strings_) {
    for (size_t length = std::min(pending_.size(), stop_string.size() - 1); length > hold; --length) {
      if (std::string_view(pending_).substr(pending_.size() - length) ==
          std::string_view(stop_string).substr(0, length)) {
        hold = length;
        break;
      }
    }
  }
  result.text = pending_.substr(0, pending_.size() - hold);
  pending_.erase(0, pending_.size() - hold);
  return result;
}

std::string StopStringMatcher::Flush() {
  std::string text = std::move(pending_);
  pending_.clear();
  return text;
}

}  // namespace flotilla::gateway
