// Lexer and parser. The lexer mirrors jinja2/lexer.py (delimiters, whitespace control, balancing of
// brackets inside tags, string escapes); the parser mirrors jinja2/parser.py's precedence climbing.
#include "services/preprocess/chat_template/syntax.h"

#include <cstring>
#include <set>

#include "absl/strings/str_cat.h"

namespace flotilla::chat_template {
namespace {

struct Token {
  enum class Kind { kData, kVariableBegin, kVariableEnd, kBlockBegin, kBlockEnd, kName, kString, kInteger, kFloat, kOperator, kEnd };
  Kind kind;
  std::string text;  // data, name, unescaped string, operator, or number spelling
  SourceLocation location;
};

[[noreturn]] void SyntaxError(SourceLocation location, const std::string& message) {
  throw TemplateError(TemplateError::Kind::kSyntax, location, message);
}

bool IsAsciiSpace(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

// Python's str.rstrip() on UTF-8 text.
std::string RstripPython(const std::string& text) {
  std::vector<char32_t> code_points = DecodeUtf8(text);
  size_t end = code_points.size();
  while (end > 0 && IsPythonSpace(code_points[end - 1])) --end;
  if (end == code_points.size()) return text;
  return EncodeUtf8(code_points, 0, end);
}

bool AllPythonSpace(std::string_view text) {
  if (text.empty()) return false;
  for (char32_t c : DecodeUtf8(text)) {
    if (!IsPythonSpace(c)) return false;
  }
  return true;
}

class Lexer {
 public:
  explicit Lexer(const std::string& raw_source) {
    // jinja2 normalizes \r\n and \r to \n and drops one trailing newline (keep_trailing_newline=False).
    source_.reserve(raw_source.size());
    for (size_t i = 0; i < raw_source.size(); ++i) {
      if (raw_source[i] == '\r') {
        source_ += '\n';
        if (i + 1 < raw_source.size() && raw_source[i + 1] == '\n') ++i;
      } else {
        source_ += raw_source[i];
      }
    }
    if (!source_.empty() && source_.back() == '\n') source_.pop_back();
  }

  std::vector<Token> Tokenize() {
    while (position_ < source_.size()) LexRoot();
    tokens_.push_back({Token::Kind::kEnd, "", LocationOf(position_)});
    return std::move(tokens_);
  }

 private:
  SourceLocation LocationOf(size_t position) {
    // Lines are counted incrementally: positions only move forward.
    while (line_scan_ < position) {
      if (source_[line_scan_] == '\n') {
        ++line_;
        line_start_ = line_scan_ + 1;
      }
      ++line_scan_;
    }
    return {line_, static_cast<int>(position - line_start_) + 1};
  }

  // Whether `{%` at `position` opens a raw block; returns the position after its `%}` (and trim).
  size_t MatchRawBegin(size_t position) {
    size_t i = position + 2;
    if (i < source_.size() && (source_[i] == '-' || source_[i] == '+')) ++i;
    while (i < source_.size() && IsAsciiSpace(source_[i])) ++i;
    if (source_.compare(i, 3, "raw") != 0) return 0;
    i += 3;
    while (i < source_.size() && IsAsciiSpace(source_[i])) ++i;
    if (source_.compare(i, 3, "-%}") == 0) {
      i += 3;
      while (i < source_.size() && IsAsciiSpace(source_[i])) ++i;
      return i;
    }
    if (source_.compare(i, 2, "%}") == 0) return i + 2;
    return 0;
  }

  void EmitData(std::string text, size_t position) {
    if (!text.empty()) tokens_.push_back({Token::Kind::kData, std::move(text), LocationOf(position)});
  }

  // Text before a tag, with `-` stripping or lstrip_blocks applied as jinja2's OptionalLStrip does.
  std::string StripBeforeTag(std::string text, char sign, bool is_variable) {
    if (sign == '-') return RstripPython(text);
    if (sign != '+' && !is_variable) {
      size_t line_position = text.rfind('\n');
      line_position = line_position == std::string::npos ? 0 : line_position + 1;
      if ((line_position > 0 || line_starting_) && AllPythonSpace(std::string_view(text).substr(line_position))) {
        text.resize(line_position);
      }
    }
    return text;
  }

  void LexRoot() {
    size_t tag = position_;
    while (true) {
      tag = source_.find('{', tag);
      if (tag == std::string::npos || tag + 1 >= source_.size()) {
        EmitData(source_.substr(position_), position_);
        position_ = source_.size();
        return;
      }
      char next = source_[tag + 1];
      if (next == '{' || next == '%' || next == '#') break;
      ++tag;
    }
    char opener = source_[tag + 1];
    char sign = tag + 2 < source_.size() ? source_[tag + 2] : '\0';
    if (sign != '-' && sign != '+') sign = '\0';
    std::string text = StripBeforeTag(source_.substr(position_, tag - position_), sign, opener == '{');
    EmitData(std::move(text), position_);
    line_starting_ = false;
    if (opener == '%') {
      if (size_t after = MatchRawBegin(tag)) {
        LexRaw(tag, after);
        return;
      }
    }
    size_t inner = tag + 2 + (sign ? 1 : 0);
    if (opener == '#') {
      LexComment(tag, inner);
      return;
    }
    tokens_.push_back({opener == '{' ? Token::Kind::kVariableBegin : Token::Kind::kBlockBegin, "", LocationOf(tag)});
    position_ = inner;
    LexTag(opener == '{', tag);
  }

  void LexRaw(size_t tag, size_t after_begin) {
    // Find `{%[-+]? endraw [-+]?%}`.
    size_t search = after_begin;
    while (true) {
      size_t candidate = source_.find("{%", search);
      if (candidate == std::string::npos) SyntaxError(LocationOf(tag), "missing end of raw directive ({% endraw %})");
      size_t i = candidate + 2;
      char sign = '\0';
      if (i < source_.size() && (source_[i] == '-' || source_[i] == '+')) sign = source_[i++];
      while (i < source_.size() && IsAsciiSpace(source_[i])) ++i;
      if (source_.compare(i, 6, "endraw") != 0) {
        search = candidate + 2;
        continue;
      }
      i += 6;
      while (i < source_.size() && IsAsciiSpace(source_[i])) ++i;
      size_t end;
      if (source_.compare(i, 3, "+%}") == 0) {
        end = i + 3;
      } else if (source_.compare(i, 3, "-%}") == 0) {
        end = i + 3;
        while (end < source_.size() && IsAsciiSpace(source_[end])) ++end;
      } else if (source_.compare(i, 2, "%}") == 0) {
        end = i + 2;
        if (end < source_.size() && source_[end] == '\n') ++end;
      } else {
        search = candidate + 2;
        continue;
      }
      std::string text = StripBeforeTag(source_.substr(after_begin, candidate - after_begin), sign, false);
      EmitData(std::move(text), after_begin);
      line_starting_ = source_[end - 1] == '\n';
      position_ = end;
      return;
    }
  }

  void LexComment(size_t tag, size_t inner) {
    size_t end = source_.find("#}", inner);
    if (end == std::string::npos) SyntaxError(LocationOf(tag), "missing end of comment tag #}");
    // The earliest of `+#}`, `-#}\s*`, `#}\n?` wins; a `-` just before `#}` strips what follows.
    size_t after = end + 2;
    if (end > inner && source_[end - 1] == '-') {
      while (after < source_.size() && IsAsciiSpace(source_[after])) ++after;
    } else if (!(end > inner && source_[end - 1] == '+')) {
      if (after < source_.size() && source_[after] == '\n') ++after;
    }
    line_starting_ = source_[after - 1] == '\n';
    position_ = after;
  }

  // Inside {{ }} or {% %}: tokens until the closing delimiter, when brackets are balanced.
  void LexTag(bool is_variable, size_t tag) {
    std::vector<char> balancing;
    while (true) {
      if (position_ >= source_.size()) {
        SyntaxError(LocationOf(tag), is_variable ? "unexpected end of template, expected '}}'" : "unexpected end of template, expected '%}'");
      }
      if (balancing.empty()) {
        if (is_variable) {
          if (source_.compare(position_, 3, "-}}") == 0) {
            tokens_.push_back({Token::Kind::kVariableEnd, "", LocationOf(position_)});
            position_ += 3;
            while (position_ < source_.size() && IsPythonSpaceAt(position_)) position_ += CharLengthAt(position_);
            line_starting_ = source_[position_ - 1] == '\n';
            return;
          }
          if (source_.compare(position_, 2, "}}") == 0) {
            tokens_.push_back({Token::Kind::kVariableEnd, "", LocationOf(position_)});
            position_ += 2;
            line_starting_ = false;
            return;
          }
        } else {
          if (source_.compare(position_, 3, "+%}") == 0) {
            tokens_.push_back({Token::Kind::kBlockEnd, "", LocationOf(position_)});
            position_ += 3;
            line_starting_ = false;
            return;
          }
          if (source_.compare(position_, 3, "-%}") == 0) {
            tokens_.push_back({Token::Kind::kBlockEnd, "", LocationOf(position_)});
            position_ += 3;
            while (position_ < source_.size() && IsPythonSpaceAt(position_)) position_ += CharLengthAt(position_);
            line_starting_ = source_[position_ - 1] == '\n';
            return;
          }
          if (source_.compare(position_, 2, "%}") == 0) {
            tokens_.push_back({Token::Kind::kBlockEnd, "", LocationOf(position_)});
            position_ += 2;
            line_starting_ = false;
            if (position_ < source_.size() && source_[position_] == '\n') {  // trim_blocks
              ++position_;
              line_starting_ = true;
            }
            return;
          }
        }
      }
      char c = source_[position_];
      if (IsAsciiSpace(c)) {
        ++position_;
        continue;
      }
      SourceLocation location = LocationOf(position_);
      if (std::isdigit(static_cast<unsigned char>(c))) {
        LexNumber(location);
        continue;
      }
      if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
        size_t end = position_;
        while (end < source_.size() && (std::isalnum(static_cast<unsigned char>(source_[end])) || source_[end] == '_')) ++end;
        tokens_.push_back({Token::Kind::kName, source_.substr(position_, end - position_), location});
        position_ = end;
        continue;
      }
      if (c == '\'' || c == '"') {
        LexString(location);
        continue;
      }
      static const char* const kOperators[] = {"//", "**", "==", "!=", ">=", "<=", "+", "-", "/", "*", "%", "~", "[",
                                               "]",  "(",  ")",  "{",  "}",  "=",  ".", ":", "|", ",", ";", "<", ">"};
      bool matched = false;
      for (const char* op : kOperators) {
        size_t length = std::strlen(op);
        if (source_.compare(position_, length, op) == 0) {
          std::string text(op);
          if (text == "(" || text == "[" || text == "{") {
            balancing.push_back(text == "(" ? ')' : text == "[" ? ']' : '}');
          } else if (text == ")" || text == "]" || text == "}") {
            if (balancing.empty()) SyntaxError(location, "unexpected '" + text + "'");
            if (balancing.back() != text[0]) {
              SyntaxError(location, "unexpected '" + text + "', expected '" + std::string(1, balancing.back()) + "'");
            }
            balancing.pop_back();
          }
          tokens_.push_back({Token::Kind::kOperator, std::move(text), location});
          position_ += length;
          matched = true;
          break;
        }
      }
      if (!matched) {
        std::vector<char32_t> code_point = DecodeUtf8(std::string_view(source_).substr(position_, 4));
        std::string shown;
        if (!code_point.empty()) AppendUtf8(shown, code_point[0]);
        SyntaxError(location, "unexpected character '" + shown + "' in tag");
      }
    }
  }

  size_t CharLengthAt(size_t position) {
    unsigned char lead = static_cast<unsigned char>(source_[position]);
    return lead < 0x80 ? 1 : (lead >> 5) == 0x6 ? 2 : (lead >> 4) == 0xe ? 3 : (lead >> 3) == 0x1e ? 4 : 1;
  }

  bool IsPythonSpaceAt(size_t position) {
    std::vector<char32_t> code_point = DecodeUtf8(std::string_view(source_).substr(position, CharLengthAt(position)));
    return !code_point.empty() && IsPythonSpace(code_point[0]);
  }

  // Digits with optional underscores between them: (\d+_)*\d+
  size_t DigitRun(size_t position) {
    size_t i = position;
    if (i >= source_.size() || !std::isdigit(static_cast<unsigned char>(source_[i]))) return position;
    while (i < source_.size()) {
      if (std::isdigit(static_cast<unsigned char>(source_[i]))) {
        ++i;
      } else if (source_[i] == '_' && i + 1 < source_.size() && std::isdigit(static_cast<unsigned char>(source_[i + 1]))) {
        ++i;
      } else {
        break;
      }
    }
    return i;
  }

  void LexNumber(SourceLocation location) {
    size_t start = position_;
    bool after_dot = start > 0 && source_[start - 1] == '.';
    // Hexadecimal, octal and binary integers.
    if (source_[start] == '0' && start + 1 < source_.size() && std::strchr("xXoObB", source_[start + 1]) != nullptr &&
        source_[start + 1] != '\0') {
      int base = (source_[start + 1] == 'x' || source_[start + 1] == 'X') ? 16 : (source_[start + 1] == 'o' || source_[start + 1] == 'O') ? 8 : 2;
      size_t i = start + 2;
      std::string digits;
      while (i < source_.size() && (std::isxdigit(static_cast<unsigned char>(source_[i])) || source_[i] == '_')) {
        if (source_[i] != '_') digits += source_[i];
        ++i;
      }
      if (!digits.empty()) {
        try {
          tokens_.push_back({Token::Kind::kInteger, std::to_string(std::stoll(digits, nullptr, base)), location});
        } catch (const std::exception&) {
          SyntaxError(location, "integer literal out of range");
        }
        position_ = i;
        return;
      }
    }
    size_t end = DigitRun(start);
    bool is_float = false;
    if (!after_dot) {
      size_t i = end;
      if (i < source_.size() && source_[i] == '.' && DigitRun(i + 1) > i + 1) {
        i = DigitRun(i + 1);
        is_float = true;
      }
      if (i < source_.size() && (source_[i] == 'e' || source_[i] == 'E')) {
        size_t j = i + 1;
        if (j < source_.size() && (source_[j] == '+' || source_[j] == '-')) ++j;
        if (DigitRun(j) > j) {
          i = DigitRun(j);
          is_float = true;
        }
      }
      if (is_float) end = i;
    }
    std::string text;
    for (size_t i = start; i < end; ++i) {
      if (source_[i] != '_') text += source_[i];
    }
    if (!is_float) {
      // Python ints are unbounded; templates never need more than 64 bits.
      errno = 0;
      char* parse_end = nullptr;
      long long parsed = std::strtoll(text.c_str(), &parse_end, 10);
      if (errno == ERANGE) SyntaxError(location, "integer literal " + text + " is out of the 64-bit range");
      text = std::to_string(parsed);
    }
    tokens_.push_back({is_float ? Token::Kind::kFloat : Token::Kind::kInteger, text, location});
    position_ = end;
  }

  void LexString(SourceLocation location) {
    char quote = source_[position_];
    size_t i = position_ + 1;
    std::string value;
    while (true) {
      if (i >= source_.size()) SyntaxError(location, "unterminated string literal");
      char c = source_[i];
      if (c == quote) break;
      if (c != '\\') {
        value += c;
        ++i;
        continue;
      }
      if (i + 1 >= source_.size()) SyntaxError(location, "unterminated string literal");
      char escape = source_[i + 1];
      i += 2;
      auto hex_escape = [&](int digits) {
        if (i + digits > source_.size()) SyntaxError(location, "truncated \\x, \\u or \\U escape in string literal");
        char32_t code_point = 0;
        for (int k = 0; k < digits; ++k) {
          char h = source_[i + k];
          if (!std::isxdigit(static_cast<unsigned char>(h))) SyntaxError(location, "truncated \\x, \\u or \\U escape in string literal");
          code_point = code_point * 16 + (std::isdigit(static_cast<unsigned char>(h)) ? h - '0' : (std::tolower(h) - 'a' + 10));
        }
        if (code_point > 0x10ffff) SyntaxError(location, "illegal Unicode character in string literal");
        i += digits;
        AppendUtf8(value, code_point);
      };
      switch (escape) {
        case '\n': break;
        case '\\': value += '\\'; break;
        case '\'': value += '\''; break;
        case '"': value += '"'; break;
        case 'a': value += '\a'; break;
        case 'b': value += '\b'; break;
        case 'f': value += '\f'; break;
        case 'n': value += '\n'; break;
        case 'r': value += '\r'; break;
        case 't': value += '\t'; break;
        case 'v': value += '\v'; break;
        case 'x': hex_escape(2); break;
        case 'u': hex_escape(4); break;
        case 'U': hex_escape(8); break;
        case 'N': SyntaxError(location, "\\N{...} escapes in string literals are not supported");
        default:
          if (escape >= '0' && escape <= '7') {
            char32_t code_point = escape - '0';
            for (int k = 0; k < 2 && i < source_.size() && source_[i] >= '0' && source_[i] <= '7'; ++k) {
              code_point = code_point * 8 + (source_[i++] - '0');
            }
            AppendUtf8(value, code_point);
          } else {
            // Python keeps unknown escapes as written.
            value += '\\';
            value += escape;
          }
      }
    }
    tokens_.push_back({Token::Kind::kString, std::move(value), location});
    position_ = i + 1;
  }

  std::string source_;
  size_t position_ = 0;
  bool line_starting_ = true;
  std::vector<Token> tokens_;
  int line_ = 1;
  size_t line_start_ = 0;
  size_t line_scan_ = 0;
};

class Parser {
 public:
  explicit Parser(std::vector<Token> tokens) : tokens_(std::move(tokens)) {}

  std::unique_ptr<Template> ParseTemplate() {
    auto parsed = std::make_unique<Template>();
    parsed->body = ParseBody({});
    if (Current().kind != Token::Kind::kEnd) SyntaxError(Current().location, "unexpected tokens after the template");
    return parsed;
  }

 private:
  static constexpr int kMaxNesting = 200;

  const Token& Current() const { return tokens_[index_]; }
  const Token& Peek(size_t ahead = 1) const { return tokens_[std::min(index_ + ahead, tokens_.size() - 1)]; }
  void Advance() {
    if (index_ + 1 < tokens_.size()) ++index_;
  }
  bool IsOperator(const char* op) const { return Current().kind == Token::Kind::kOperator && Current().text == op; }
  bool IsName(const char* name) const { return Current().kind == Token::Kind::kName && Current().text == name; }
  bool SkipOperator(const char* op) {
    if (!IsOperator(op)) return false;
    Advance();
    return true;
  }
  bool SkipName(const char* name) {
    if (!IsName(name)) return false;
    Advance();
    return true;
  }
  static std::string Describe(const Token& token) {
    switch (token.kind) {
      case Token::Kind::kEnd: return "end of template";
      case Token::Kind::kVariableEnd: return "end of print statement '}}'";
      case Token::Kind::kBlockEnd: return "end of statement block '%}'";
      case Token::Kind::kVariableBegin: return "'{{'";
      case Token::Kind::kBlockBegin: return "'{%'";
      case Token::Kind::kData: return "template text";
      case Token::Kind::kString: return "string literal";
      default: return "'" + token.text + "'";
    }
  }
  void ExpectOperator(const char* op) {
    if (!SkipOperator(op)) SyntaxError(Current().location, std::string("expected '") + op + "', got " + Describe(Current()));
  }
  std::string ExpectName() {
    if (Current().kind != Token::Kind::kName) SyntaxError(Current().location, "expected a name, got " + Describe(Current()));
    std::string name = Current().text;
    Advance();
    return name;
  }
  void ExpectBlockEnd() {
    if (Current().kind != Token::Kind::kBlockEnd) SyntaxError(Current().location, "expected end of statement block '%}', got " + Describe(Current()));
    Advance();
  }

  struct NestingGuard {
    NestingGuard(Parser& parser, SourceLocation location) : parser(parser) {
      if (++parser.depth_ > kMaxNesting) SyntaxError(location, "template nesting is deeper than " + std::to_string(kMaxNesting) + " levels");
    }
    ~NestingGuard() { --parser.depth_; }
    Parser& parser;
  };

  // Statements until a block tag whose name is in `end_names` (left current, after `{%`).
  Body ParseBody(const std::set<std::string>& end_names) {
    Body body;
    while (true) {
      const Token& token = Current();
      if (token.kind == Token::Kind::kEnd) {
        if (!end_names.empty()) {
          std::string expected;
          for (const std::string& name : end_names) expected += (expected.empty() ? "'" : " or '") + name + "'";
          SyntaxError(token.location, "unexpected end of template, expected " + expected);
        }
        return body;
      }
      if (token.kind == Token::Kind::kData) {
        auto statement = std::make_unique<Statement>();
        statement->kind = Statement::Kind::kText;
        statement->location = token.location;
        statement->text = token.text;
        body.push_back(std::move(statement));
        Advance();
      } else if (token.kind == Token::Kind::kVariableBegin) {
        auto statement = std::make_unique<Statement>();
        statement->kind = Statement::Kind::kOutput;
        statement->location = token.location;
        Advance();
        statement->expression = ParseTuple(false, true, {});
        if (Current().kind != Token::Kind::kVariableEnd) SyntaxError(Current().location, "expected end of print statement '}}', got " + Describe(Current()));
        Advance();
        body.push_back(std::move(statement));
      } else if (token.kind == Token::Kind::kBlockBegin) {
        const Token& tag = Peek();
        if (tag.kind == Token::Kind::kName && end_names.count(tag.text)) {
          Advance();  // leave the tag name current for the caller
          return body;
        }
        Advance();
        body.push_back(ParseStatement());
      } else {
        SyntaxError(token.location, "unexpected " + Describe(token));
      }
    }
  }

  std::unique_ptr<Statement> ParseStatement() {
    const Token& tag = Current();
    if (tag.kind != Token::Kind::kName) SyntaxError(tag.location, "expected a statement name after '{%', got " + Describe(tag));
    NestingGuard guard(*this, tag.location);
    auto statement = std::make_unique<Statement>();
    statement->location = tag.location;
    std::string name = tag.text;
    Advance();
    if (name == "if") {
      statement->kind = Statement::Kind::kIf;
      ExpressionPtr condition = ParseTuple(false, false, {});
      ExpectBlockEnd();
      while (true) {
        Body body = ParseBody({"elif", "else", "endif"});
        statement->branches.emplace_back(std::move(condition), std::move(body));
        std::string branch = Current().text;
        Advance();
        if (branch == "elif") {
          condition = ParseTuple(false, false, {});
          ExpectBlockEnd();
        } else if (branch == "else") {
          ExpectBlockEnd();
          statement->branches.emplace_back(nullptr, ParseBody({"endif"}));
          Advance();
          ExpectBlockEnd();
          break;
        } else {
          ExpectBlockEnd();
          break;
        }
      }
    } else if (name == "for") {
      statement->kind = Statement::Kind::kFor;
      statement->target = ParseAssignTarget(false);
      if (!SkipName("in")) SyntaxError(Current().location, "expected 'in' in for loop, got " + Describe(Current()));
      statement->expression = ParseTuple(false, false, {"recursive"});
      if (SkipName("if")) statement->condition = ParseExpression(true);
      if (SkipName("recursive")) statement->recursive = true;
      ExpectBlockEnd();
      statement->body = ParseBody({"endfor", "else"});
      if (Current().text == "else") {
        Advance();
        ExpectBlockEnd();
        statement->else_body = ParseBody({"endfor"});
      }
      Advance();
      ExpectBlockEnd();
    } else if (name == "set") {
      statement->target = ParseAssignTarget(true);
      if (SkipOperator("=")) {
        statement->kind = Statement::Kind::kSet;
        statement->expression = ParseTuple(false, true, {});
        ExpectBlockEnd();
      } else {
        statement->kind = Statement::Kind::kSetBlock;
        if (statement->target.is_tuple || !statement->target.attribute.empty()) {
          SyntaxError(statement->location, "a block set ({% set name %}...{% endset %}) assigns to one plain name");
        }
        if (IsOperator("|")) statement->expression = ParseFilterChain(nullptr);
        ExpectBlockEnd();
        statement->body = ParseBody({"endset"});
        Advance();
        ExpectBlockEnd();
      }
    } else if (name == "macro") {
      statement->kind = Statement::Kind::kMacro;
      statement->name = ExpectName();
      ParseSignature(statement->parameters);
      ExpectBlockEnd();
      statement->body = ParseBody({"endmacro"});
      Advance();
      ExpectBlockEnd();
    } else if (name == "call") {
      statement->kind = Statement::Kind::kCallBlock;
      if (IsOperator("(")) ParseSignature(statement->parameters);
      statement->expression = ParseExpression(true);
      if (statement->expression->kind != Expression::Kind::kCall) SyntaxError(statement->location, "expected a call after {% call %}");
      ExpectBlockEnd();
      statement->body = ParseBody({"endcall"});
      Advance();
      ExpectBlockEnd();
    } else if (name == "filter") {
      statement->kind = Statement::Kind::kFilterBlock;
      statement->expression = ParseFilterChain(nullptr, /*start_inline=*/true);
      ExpectBlockEnd();
      statement->body = ParseBody({"endfilter"});
      Advance();
      ExpectBlockEnd();
    } else if (name == "generation") {
      statement->kind = Statement::Kind::kGeneration;
      ExpectBlockEnd();
      statement->body = ParseBody({"endgeneration"});
      Advance();
      ExpectBlockEnd();
    } else if (name == "with") {
      statement->kind = Statement::Kind::kWith;
      while (Current().kind != Token::Kind::kBlockEnd) {
        if (!statement->parameters.empty()) ExpectOperator(",");
        std::string target = ExpectName();
        ExpectOperator("=");
        statement->parameters.emplace_back(target, ParseExpression(true));
      }
      ExpectBlockEnd();
      statement->body = ParseBody({"endwith"});
      Advance();
      ExpectBlockEnd();
    } else if (name == "break" || name == "continue") {
      statement->kind = name == "break" ? Statement::Kind::kBreak : Statement::Kind::kContinue;
      ExpectBlockEnd();
    } else if (name == "include" || name == "extends" || name == "import" || name == "from" || name == "block" ||
               name == "autoescape" || name == "trans" || name == "pluralize") {
      SyntaxError(tag.location, "the '" + name + "' tag is not supported in chat templates");
    } else {
      SyntaxError(tag.location, "encountered unknown tag '" + name + "'");
    }
    return statement;
  }

  // `(a, b=default, ...)` of a macro or a call block's caller.
  void ParseSignature(std::vector<std::pair<std::string, ExpressionPtr>>& parameters) {
    ExpectOperator("(");
    while (!IsOperator(")")) {
      if (!parameters.empty()) ExpectOperator(",");
      if (IsOperator(")")) break;
      std::string parameter = ExpectName();
      ExpressionPtr default_value;
      if (SkipOperator("=")) default_value = ParseExpression(true);
      parameters.emplace_back(parameter, std::move(default_value));
    }
    ExpectOperator(")");
  }

  AssignTarget ParseAssignTarget(bool with_namespace) {
    AssignTarget target;
    bool parenthesized = SkipOperator("(");
    target.names.push_back(ExpectName());
    if (with_namespace && !parenthesized && IsOperator(".")) {
      Advance();
      target.attribute = ExpectName();
      return target;
    }
    while (SkipOperator(",")) {
      target.is_tuple = true;
      if (Current().kind != Token::Kind::kName || IsName("in")) break;
      target.names.push_back(ExpectName());
    }
    if (parenthesized) ExpectOperator(")");
    return target;
  }

  bool IsTupleEnd(const std::set<std::string>& extra_end_names) const {
    const Token& token = Current();
    if (token.kind == Token::Kind::kVariableEnd || token.kind == Token::Kind::kBlockEnd || token.kind == Token::Kind::kEnd) return true;
    if (token.kind == Token::Kind::kOperator && token.text == ")") return true;
    return token.kind == Token::Kind::kName && extra_end_names.count(token.text) > 0;
  }

  ExpressionPtr MakeExpression(Expression::Kind kind, SourceLocation location) {
    auto expression = std::make_unique<Expression>();
    expression->kind = kind;
    expression->location = location;
    return expression;
  }

  ExpressionPtr ParseTuple(bool explicit_parentheses, bool with_condition, const std::set<std::string>& extra_end_names) {
    SourceLocation location = Current().location;
    std::vector<ExpressionPtr> items;
    bool is_tuple = false;
    while (true) {
      if (!items.empty()) ExpectOperator(",");
      if (IsTupleEnd(extra_end_names)) break;
      items.push_back(ParseExpression(with_condition));
      if (IsOperator(",")) {
        is_tuple = true;
      } else {
        break;
      }
    }
    if (!is_tuple) {
      if (!items.empty()) return std::move(items[0]);
      if (!explicit_parentheses) SyntaxError(Current().location, "expected an expression, got " + Describe(Current()));
    }
    ExpressionPtr tuple = MakeExpression(Expression::Kind::kTuple, location);
    tuple->children = std::move(items);
    return tuple;
  }

  ExpressionPtr ParseExpression(bool with_condition) {
    NestingGuard guard(*this, Current().location);
    return with_condition ? ParseCondition() : ParseOr();
  }

  ExpressionPtr ParseCondition() {
    ExpressionPtr expression = ParseOr();
    while (IsName("if")) {
      SourceLocation location = Current().location;
      Advance();
      ExpressionPtr test = ParseOr();
      ExpressionPtr otherwise;
      if (SkipName("else")) otherwise = ParseCondition();
      ExpressionPtr condition = MakeExpression(Expression::Kind::kCondition, location);
      condition->children.push_back(std::move(test));
      condition->children.push_back(std::move(expression));
      condition->children.push_back(std::move(otherwise));
      expression = std::move(condition);
    }
    return expression;
  }

  ExpressionPtr Binary(const std::string& op, ExpressionPtr left, ExpressionPtr right, SourceLocation location) {
    ExpressionPtr expression = MakeExpression(Expression::Kind::kBinary, location);
    expression->name = op;
    expression->children.push_back(std::move(left));
    expression->children.push_back(std::move(right));
    return expression;
  }

  ExpressionPtr ParseOr() {
    ExpressionPtr left = ParseAnd();
    while (IsName("or")) {
      SourceLocation location = Current().location;
      Advance();
      left = Binary("or", std::move(left), ParseAnd(), location);
    }
    return left;
  }

  ExpressionPtr ParseAnd() {
    ExpressionPtr left = ParseNot();
    while (IsName("and")) {
      SourceLocation location = Current().location;
      Advance();
      left = Binary("and", std::move(left), ParseNot(), location);
    }
    return left;
  }

  ExpressionPtr ParseNot() {
    if (IsName("not")) {
      NestingGuard guard(*this, Current().location);
      ExpressionPtr expression = MakeExpression(Expression::Kind::kUnary, Current().location);
      Advance();
      expression->name = "not";
      expression->children.push_back(ParseNot());
      return expression;
    }
    return ParseCompare();
  }

  ExpressionPtr ParseCompare() {
    SourceLocation location = Current().location;
    ExpressionPtr first = ParseMath1();
    ExpressionPtr compare;
    while (true) {
      std::string op;
      if (Current().kind == Token::Kind::kOperator &&
          (Current().text == "==" || Current().text == "!=" || Current().text == "<" || Current().text == "<=" ||
           Current().text == ">" || Current().text == ">=")) {
        op = Current().text;
        Advance();
      } else if (IsName("in")) {
        op = "in";
        Advance();
      } else if (IsName("not") && Peek().kind == Token::Kind::kName && Peek().text == "in") {
        op = "not in";
        Advance();
        Advance();
      } else {
        break;
      }
      if (!compare) {
        compare = MakeExpression(Expression::Kind::kCompare, location);
        compare->children.push_back(std::move(first));
      }
      compare->operators.push_back(op);
      compare->children.push_back(ParseMath1());
    }
    return compare ? std::move(compare) : std::move(first);
  }

  ExpressionPtr ParseMath1() {
    ExpressionPtr left = ParseConcat();
    while (IsOperator("+") || IsOperator("-")) {
      SourceLocation location = Current().location;
      std::string op = Current().text;
      Advance();
      left = Binary(op, std::move(left), ParseConcat(), location);
    }
    return left;
  }

  ExpressionPtr ParseConcat() {
    ExpressionPtr left = ParseMath2();
    while (IsOperator("~")) {
      SourceLocation location = Current().location;
      Advance();
      left = Binary("~", std::move(left), ParseMath2(), location);
    }
    return left;
  }

  ExpressionPtr ParseMath2() {
    ExpressionPtr left = ParsePow();
    while (IsOperator("*") || IsOperator("/") || IsOperator("//") || IsOperator("%")) {
      SourceLocation location = Current().location;
      std::string op = Current().text;
      Advance();
      left = Binary(op, std::move(left), ParsePow(), location);
    }
    return left;
  }

  ExpressionPtr ParsePow() {
    ExpressionPtr left = ParseUnary(true);
    while (IsOperator("**")) {
      SourceLocation location = Current().location;
      Advance();
      left = Binary("**", std::move(left), ParseUnary(true), location);
    }
    return left;
  }

  ExpressionPtr ParseUnary(bool with_filter) {
    NestingGuard guard(*this, Current().location);
    ExpressionPtr node;
    if (IsOperator("-") || IsOperator("+")) {
      node = MakeExpression(Expression::Kind::kUnary, Current().location);
      node->name = Current().text;
      Advance();
      node->children.push_back(ParseUnary(false));
    } else {
      node = ParsePrimary();
    }
    node = ParsePostfix(std::move(node));
    if (with_filter) node = ParseFilterExpression(std::move(node));
    return node;
  }

  ExpressionPtr ParsePrimary() {
    const Token& token = Current();
    SourceLocation location = token.location;
    if (token.kind == Token::Kind::kName) {
      ExpressionPtr node;
      if (token.text == "true" || token.text == "True" || token.text == "false" || token.text == "False") {
        node = MakeExpression(Expression::Kind::kLiteral, location);
        node->literal = Value(token.text == "true" || token.text == "True");
      } else if (token.text == "none" || token.text == "None") {
        node = MakeExpression(Expression::Kind::kLiteral, location);
        node->literal = Value::None();
      } else {
        node = MakeExpression(Expression::Kind::kName, location);
        node->name = token.text;
      }
      Advance();
      return node;
    }
    if (token.kind == Token::Kind::kString) {
      std::string text;
      while (Current().kind == Token::Kind::kString) {
        text += Current().text;
        Advance();
      }
      ExpressionPtr node = MakeExpression(Expression::Kind::kLiteral, location);
      node->literal = Value(std::move(text));
      return node;
    }
    if (token.kind == Token::Kind::kInteger || token.kind == Token::Kind::kFloat) {
      ExpressionPtr node = MakeExpression(Expression::Kind::kLiteral, location);
      if (token.kind == Token::Kind::kInteger) {
        node->literal = Value(static_cast<int64_t>(std::stoll(token.text)));
      } else {
        node->literal = Value(std::strtod(token.text.c_str(), nullptr));
      }
      Advance();
      return node;
    }
    if (IsOperator("(")) {
      Advance();
      ExpressionPtr node = ParseTuple(true, true, {});
      ExpectOperator(")");
      return node;
    }
    if (IsOperator("[")) {
      Advance();
      ExpressionPtr node = MakeExpression(Expression::Kind::kList, location);
      while (!IsOperator("]")) {
        if (!node->children.empty()) ExpectOperator(",");
        if (IsOperator("]")) break;
        node->children.push_back(ParseExpression(true));
      }
      ExpectOperator("]");
      return node;
    }
    if (IsOperator("{")) {
      Advance();
      ExpressionPtr node = MakeExpression(Expression::Kind::kDict, location);
      while (!IsOperator("}")) {
        if (!node->children.empty()) ExpectOperator(",");
        if (IsOperator("}")) break;
        node->children.push_back(ParseExpression(true));
        ExpectOperator(":");
        node->children.push_back(ParseExpression(true));
      }
      ExpectOperator("}");
      return node;
    }
    SyntaxError(location, "unexpected " + Describe(token));
  }

  ExpressionPtr ParsePostfix(ExpressionPtr node) {
    while (true) {
      if (IsOperator(".") || IsOperator("[")) {
        node = ParseSubscript(std::move(node));
      } else if (IsOperator("(")) {
        node = ParseCall(std::move(node));
      } else {
        return node;
      }
    }
  }

  ExpressionPtr ParseFilterExpression(ExpressionPtr node) {
    while (true) {
      if (IsOperator("|")) {
        node = ParseFilterChain(std::move(node));
      } else if (IsName("is")) {
        node = ParseTest(std::move(node));
      } else if (IsOperator("(")) {
        node = ParseCall(std::move(node));
      } else {
        return node;
      }
    }
  }

  ExpressionPtr ParseSubscript(ExpressionPtr node) {
    SourceLocation location = Current().location;
    if (SkipOperator(".")) {
      if (Current().kind == Token::Kind::kName) {
        ExpressionPtr attribute = MakeExpression(Expression::Kind::kGetAttr, location);
        attribute->name = Current().text;
        attribute->children.push_back(std::move(node));
        Advance();
        return attribute;
      }
      if (Current().kind == Token::Kind::kInteger) {
        ExpressionPtr item = MakeExpression(Expression::Kind::kGetItem, location);
        item->children.push_back(std::move(node));
        ExpressionPtr key = MakeExpression(Expression::Kind::kLiteral, Current().location);
        key->literal = Value(static_cast<int64_t>(std::stoll(Current().text)));
        item->children.push_back(std::move(key));
        Advance();
        return item;
      }
      SyntaxError(Current().location, "expected a name or number after '.', got " + Describe(Current()));
    }
    Advance();  // '['
    std::vector<ExpressionPtr> arguments;
    while (!IsOperator("]")) {
      if (!arguments.empty()) {
        ExpectOperator(",");
        if (IsOperator("]")) break;
      }
      arguments.push_back(ParseSubscribed());
    }
    ExpectOperator("]");
    if (arguments.empty()) SyntaxError(location, "expected a subscript inside '[]'");
    ExpressionPtr key;
    if (arguments.size() == 1) {
      key = std::move(arguments[0]);
    } else {
      // jinja2 would index with a tuple holding slice objects, which no sequence accepts; a slice
      // left inside a tuple here would have no object to slice, so it is refused while parsing.
      for (const ExpressionPtr& argument : arguments) {
        if (argument->kind == Expression::Kind::kSlice) {
          SyntaxError(argument->location, "a slice must be the only subscript inside '[]'");
        }
      }
      key = MakeExpression(Expression::Kind::kTuple, location);
      key->children = std::move(arguments);
    }
    if (key->kind == Expression::Kind::kSlice) {
      key->children[0] = std::move(node);
      return key;
    }
    ExpressionPtr item = MakeExpression(Expression::Kind::kGetItem, location);
    item->children.push_back(std::move(node));
    item->children.push_back(std::move(key));
    return item;
  }

  // One subscript: an expression or a slice start:stop:step (children[0] filled by the caller).
  ExpressionPtr ParseSubscribed() {
    SourceLocation location = Current().location;
    ExpressionPtr start;
    if (!IsOperator(":")) {
      start = ParseExpression(true);
      if (!IsOperator(":")) return start;
    }
    Advance();  // ':'
    ExpressionPtr slice = MakeExpression(Expression::Kind::kSlice, location);
    slice->children.push_back(nullptr);
    slice->children.push_back(std::move(start));
    ExpressionPtr stop;
    if (!IsOperator(":") && !IsOperator("]") && !IsOperator(",")) stop = ParseExpression(true);
    slice->children.push_back(std::move(stop));
    ExpressionPtr step;
    if (SkipOperator(":")) {
      if (!IsOperator("]") && !IsOperator(",")) step = ParseExpression(true);
    }
    slice->children.push_back(std::move(step));
    return slice;
  }

  void ParseCallArguments(Expression& call) {
    ExpectOperator("(");
    bool first = true;
    while (!IsOperator(")")) {
      if (!first) {
        ExpectOperator(",");
        if (IsOperator(")")) break;
      }
      first = false;
      if (IsOperator("*") || IsOperator("**")) SyntaxError(Current().location, "*args and **kwargs in calls are not supported");
      if (Current().kind == Token::Kind::kName && Peek().kind == Token::Kind::kOperator && Peek().text == "=") {
        std::string keyword = Current().text;
        Advance();
        Advance();
        call.keyword_arguments.emplace_back(keyword, ParseExpression(true));
      } else {
        if (!call.keyword_arguments.empty()) SyntaxError(Current().location, "positional argument follows keyword argument");
        call.children.push_back(ParseExpression(true));
      }
    }
    ExpectOperator(")");
  }

  ExpressionPtr ParseCall(ExpressionPtr node) {
    // A call is located where its callee starts, so errors point at `raise_exception(` not at `(`.
    ExpressionPtr call = MakeExpression(Expression::Kind::kCall, node->location);
    call->children.push_back(std::move(node));
    ParseCallArguments(*call);
    return call;
  }

  // `| name(args) | name ...`; node may be null (filter blocks, block sets).
  ExpressionPtr ParseFilterChain(ExpressionPtr node, bool start_inline = false) {
    while (IsOperator("|") || start_inline) {
      if (!start_inline) Advance();
      start_inline = false;
      ExpressionPtr filter = MakeExpression(Expression::Kind::kFilter, Current().location);
      filter->name = ExpectName();
      while (IsOperator(".")) {
        Advance();
        filter->name += "." + ExpectName();
      }
      filter->children.push_back(std::move(node));
      if (IsOperator("(")) ParseCallArguments(*filter);
      node = std::move(filter);
    }
    return node;
  }

  ExpressionPtr ParseTest(ExpressionPtr node) {
    ExpressionPtr test = MakeExpression(Expression::Kind::kTest, Current().location);
    Advance();  // 'is'
    if (SkipName("not")) test->negated = true;
    test->name = ExpectName();
    while (IsOperator(".")) {
      Advance();
      test->name += "." + ExpectName();
    }
    test->children.push_back(std::move(node));
    const Token& token = Current();
    if (IsOperator("(")) {
      ParseCallArguments(*test);
    } else if ((token.kind == Token::Kind::kName || token.kind == Token::Kind::kString || token.kind == Token::Kind::kInteger ||
                token.kind == Token::Kind::kFloat || IsOperator("[") || IsOperator("{")) &&
               !IsName("else") && !IsName("or") && !IsName("and")) {
      if (IsName("is")) SyntaxError(token.location, "you cannot chain multiple tests with 'is'");
      test->children.push_back(ParsePostfix(ParsePrimary()));
    }
    return test;
  }

  std::vector<Token> tokens_;
  size_t index_ = 0;
  int depth_ = 0;
};

}  // namespace

std::unique_ptr<Template> ParseTemplateOrThrow(const std::string& source) {
  Lexer lexer(source);
  Parser parser(lexer.Tokenize());
  return parser.ParseTemplate();
}

absl::StatusOr<std::unique_ptr<Template>> ParseTemplate(const std::string& source) {
  try {
    return ParseTemplateOrThrow(source);
  } catch (const TemplateError& error) {
    return absl::InvalidArgumentError(absl::StrCat("chat template syntax error at line ", error.location.line, ", column ",
                                                   error.location.column, ": ", error.what()));
  }
}

}  // namespace flotilla::chat_template
