// libFuzzer target: random bytes as a template source, parsed and (when it parses) rendered with a
// small conversation under tight limits. Any crash, hang, sanitizer report or exception other than
// the library's own errors is a bug.
#include <cstddef>
#include <cstdint>
#include <string>

#include "services/preprocess/chat_template/chat_template.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string source(reinterpret_cast<const char*>(data), size);
  flotilla::chat_template::ChatTemplateOptions options;
  options.add_generation_prompt = true;
  options.limits.max_output_bytes = 1 << 20;
  options.limits.max_steps = 200'000;
  options.limits.max_range_items = 10'000;
  options.limits.max_call_depth = 50;
  options.limits.max_nesting_depth = 400;  // AddressSanitizer's stack frames are several times larger
  options.special_tokens = {{"bos_token", "<s>"}, {"eos_token", "</s>"}};
  options.tools_json = R"([{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}])";
  (void)flotilla::chat_template::RenderChatTemplate(
      source, R"([{"role": "system", "content": "s"}, {"role": "user", "content": "Hi é"}, {"role": "assistant", "content": "ok"}])",
      options);
  return 0;
}
