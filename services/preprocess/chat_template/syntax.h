// The syntax tree of a chat template and the parser that builds it from source, following jinja2
// 3.1's lexer and parser with transformers' environment settings: trim_blocks and lstrip_blocks on,
// the loopcontrols extension (break, continue) and transformers' `{% generation %}` block tag, and a
// single trailing newline of the source dropped (keep_trailing_newline off).
//
//   absl::StatusOr<std::unique_ptr<Template>> parsed = ParseTemplate("{{ messages[0].content }}");
//
// Every syntax error names the line and column of the offending token. A parsed Template is
// immutable and may be rendered from several threads at once.
#pragma once

#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "services/preprocess/chat_template/value.h"

namespace flotilla::chat_template {

// A 1-based place in the template source.
struct SourceLocation {
  int line = 1;
  int column = 1;
};

// Thrown inside the parser and interpreter; converted to absl::Status at the public boundary.
class TemplateError : public std::runtime_error {
 public:
  enum class Kind { kSyntax, kRuntime, kRaised, kLimit };
  TemplateError(Kind kind, SourceLocation location, const std::string& message)
      : std::runtime_error(message), kind(kind), location(location) {}
  Kind kind;
  SourceLocation location;
};

struct Expression;
using ExpressionPtr = std::unique_ptr<Expression>;

struct Expression {
  enum class Kind {
    kLiteral,    // literal
    kName,       // name
    kList,       // children
    kTuple,      // children
    kDict,       // children: key, value, key, value...
    kGetAttr,    // children[0].name
    kGetItem,    // children[0][children[1]]
    kSlice,      // children[0][children[1]:children[2]:children[3]], each bound may be null
    kCall,       // children[0](children[1:], keyword_arguments)
    kFilter,     // children[0] | name(children[1:], keyword_arguments); children[0] null in filter blocks
    kTest,       // children[0] is [not] name(children[1:], keyword_arguments)
    kUnary,      // name ("-", "+", "not") children[0]
    kBinary,     // children[0] name children[1]: + - * / // % ** ~ and or
    kCompare,    // children[0] operators[0] children[1] operators[1] children[2] ...
    kCondition,  // children[1] if children[0] else children[2] (children[2] may be null)
  };
  Kind kind;
  SourceLocation location;
  Value literal;
  std::string name;
  bool negated = false;
  std::vector<ExpressionPtr> children;
  std::vector<std::pair<std::string, ExpressionPtr>> keyword_arguments;
  std::vector<std::string> operators;
};

struct Statement;
using Body = std::vector<std::unique_ptr<Statement>>;

// Where `{% set %}` and `{% for %}` store: a name, `ns.attribute`, or a tuple of names.
struct AssignTarget {
  std::vector<std::string> names;  // one name, or several for unpacking
  bool is_tuple = false;
  std::string attribute;           // non-empty for `ns.attribute`
};

struct Statement {
  enum class Kind { kText, kOutput, kIf, kFor, kSet, kSetBlock, kMacro, kCallBlock, kFilterBlock, kGeneration, kBreak, kContinue, kWith };
  Kind kind;
  SourceLocation location;
  std::string text;                                           // kText
  ExpressionPtr expression;                                   // kOutput, kSet value, kFor iterable, kCallBlock call, kSetBlock/kFilterBlock filter chain
  ExpressionPtr condition;                                    // kFor `if`
  std::vector<std::pair<ExpressionPtr, Body>> branches;       // kIf: condition (null for else), body
  AssignTarget target;                                        // kFor, kSet, kSetBlock
  bool recursive = false;                                     // kFor
  Body body;                                                  // kFor, kSetBlock, kMacro, kCallBlock, kFilterBlock, kGeneration, kWith
  Body else_body;                                             // kFor
  std::string name;                                           // kMacro
  std::vector<std::pair<std::string, ExpressionPtr>> parameters;  // kMacro, kCallBlock (caller), kWith (assignments)
};

struct Template {
  Body body;
};

// Parses a template; a syntax error gives InvalidArgument with "line L, column C: ...".
absl::StatusOr<std::unique_ptr<Template>> ParseTemplate(const std::string& source);

// The same, throwing TemplateError (used by the fuzzer and the renderer).
std::unique_ptr<Template> ParseTemplateOrThrow(const std::string& source);

}  // namespace flotilla::chat_template
