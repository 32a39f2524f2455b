// The interpreter: walks a parsed Template with a context of Values and writes the output text,
// with jinja2's semantics as transformers configures them (ImmutableSandboxedEnvironment, default
// Undefined, transformers' tojson/raise_exception/strftime_now/namespace/dict globals).
//
//   Renderer renderer(limits);
//   std::string text = renderer.Render(*parsed_template, {{"messages", messages}});  // throws TemplateError
//
// A Renderer renders one template once; make one per render (it holds the render's state). This is
// an internal header of flotilla_chat_template: callers use chat_template.h.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "services/preprocess/chat_template/syntax.h"
#include "services/preprocess/chat_template/value.h"

namespace flotilla::chat_template {

struct RenderLimits {
  // Output text in bytes, counting text rendered into macro results and block sets.
  size_t max_output_bytes = size_t{64} << 20;
  // Nested macro calls: a template that recurses without end stops here instead of exhausting the stack.
  int max_call_depth = 200;
  // Statements and expressions evaluated: bounds loops that print nothing.
  int64_t max_steps = 50'000'000;
  // Items range() may produce.
  int64_t max_range_items = 10'000'000;
  // Statements and expressions being evaluated at once (each a C++ stack frame): nested
  // expressions inside nested macro calls multiply, so a template within max_call_depth can still
  // nest deep enough to overflow a thread's stack (the fuzzer found 50 calls x 45 unary operators).
  int max_nesting_depth = 2000;
};

// One scope: the template's top level, a loop iteration, a macro call, a with block.
struct Frame {
  std::shared_ptr<Frame> parent;
  std::vector<std::pair<std::string, Value>> variables;

  const Value* Find(const std::string& name) const;
  void Set(const std::string& name, Value value);
};

class Renderer {
 public:
  explicit Renderer(RenderLimits limits) : limits_(limits) {}

  // Renders with `context` as the template's variables (above the globals). Throws TemplateError.
  std::string Render(const Template& parsed, std::vector<std::pair<std::string, Value>> context);

  // Used by builtins.cc.
  Value CallFilter(const std::string& name, const Value& subject, CallArguments& arguments, SourceLocation location);
  bool CallTest(const std::string& name, const Value& subject, CallArguments& arguments, SourceLocation location);
  Value GetAttribute(const Value& object, const std::string& name, SourceLocation location);
  Value GetItem(const Value& object, const Value& key, SourceLocation location);
  Value CallValue(const Value& callee, CallArguments& arguments, SourceLocation location);
  [[noreturn]] void Fail(SourceLocation location, const std::string& message);
  const RenderLimits& limits() const { return limits_; }

 private:
  enum class Flow { kNormal, kBreak, kContinue };

  Flow ExecuteBody(const Body& body, const std::shared_ptr<Frame>& frame, std::string& out);
  Flow Execute(const Statement& statement, const std::shared_ptr<Frame>& frame, std::string& out);
  void ExecuteFor(const Statement& statement, const std::shared_ptr<Frame>& frame, std::string& out);
  void RunLoop(const Statement& statement, const std::shared_ptr<Frame>& frame, const Value& iterable, int64_t depth,
               std::string& out);
  void Assign(const AssignTarget& target, const Value& value, Frame& frame, SourceLocation location);
  Value MakeMacro(const Statement& statement, const std::shared_ptr<Frame>& frame);
  Value Evaluate(const Expression& expression, const std::shared_ptr<Frame>& frame);
  Value EvaluateBinary(const Expression& expression, const std::shared_ptr<Frame>& frame);
  bool Compare(const std::string& op, const Value& left, const Value& right, SourceLocation location);
  void EvaluateArguments(const Expression& expression, size_t first, const std::shared_ptr<Frame>& frame, CallArguments& arguments);
  void Append(std::string& out, std::string_view text, SourceLocation location);
  void Step(SourceLocation location);
  // Counts one Evaluate / Execute frame for as long as it lives; throws past max_nesting_depth.
  class NestingGuard {
   public:
    NestingGuard(Renderer& renderer, SourceLocation location);
    ~NestingGuard() { --renderer_.nesting_depth_; }
    NestingGuard(const NestingGuard&) = delete;
    NestingGuard& operator=(const NestingGuard&) = delete;

   private:
    Renderer& renderer_;
  };

  RenderLimits limits_;
  int64_t steps_ = 0;
  size_t bytes_written_ = 0;
  int call_depth_ = 0;
  int nesting_depth_ = 0;
};

// Helpers shared by the renderer and the builtins (builtins.cc).
[[noreturn]] void ThrowUndefined(const Value& value, SourceLocation location);
std::string PythonTypeName(const Value& value);
// Python's `<` ordering; throws TemplateError for unordered types.
bool LessThan(const Value& left, const Value& right, SourceLocation location);
// Items of an iterable as a template for loop sees them: list items, dict keys, characters.
List Iterate(const Value& value, SourceLocation location);
// json.dumps as transformers' tojson filter calls it.
std::string ToJson(const Value& value, bool ensure_ascii, const Value& indent, const Value& separators, bool sort_keys,
                   SourceLocation location);
// The global functions: range, dict, namespace, raise_exception, strftime_now, cycler, joiner.
std::vector<std::pair<std::string, Value>> MakeGlobals(Renderer& renderer);
// Method lookup on str, dict, list: a bound method, or Undefined when there is none.
Value BoundMethod(Renderer& renderer, const Value& object, const std::string& name, SourceLocation location);

}  // namespace flotilla::chat_template
