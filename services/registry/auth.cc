#include "services/registry/auth.h"

#include <absl/strings/match.h>
#include <absl/strings/str_cat.h>
#include <absl/strings/str_split.h>
#include <absl/strings/strip.h>
#include <openssl/crypto.h>

namespace flotilla::registry {

absl::StatusOr<Authorizer> Authorizer::Create(const std::vector<std::string>& token_lines, bool anonymous_read) {
  Authorizer authorizer;
  authorizer.anonymous_read_ = anonymous_read;
  for (size_t index = 0; index < token_lines.size(); ++index) {
    absl::string_view line = absl::StripAsciiWhitespace(token_lines[index]);
    if (line.empty() || line.front() == '#') continue;
    std::vector<std::string> fields = absl::StrSplit(line, absl::ByAnyChar(" \t"), absl::SkipEmpty());
    if (fields.size() != 4 || (fields[3] != "read" && fields[3] != "write")) {
      // The line holds a secret: name its number, never its text.
      return absl::InvalidArgumentError(absl::StrCat("token line ", index + 1, " has ", fields.size(),
                                                     " fields: expected '<token> <name> <namespace or *> <read|write>'"));
    }
    authorizer.tokens_.push_back(
        Token{fields[0], fields[1], fields[2], fields[3] == "write" ? Scope::kWrite : Scope::kRead});
  }
  return authorizer;
}

absl::StatusOr<std::string> Authorizer::Check(absl::string_view authorization, const std::string& namespace_name,
                                              Scope scope) const {
  if (tokens_.empty()) return std::string("anonymous");
  absl::string_view secret = absl::StripAsciiWhitespace(authorization);
  if (absl::StartsWithIgnoreCase(secret, "bearer ")) secret = absl::StripAsciiWhitespace(secret.substr(7));
  const char* action = scope == Scope::kWrite ? "write to" : "read";
  const std::string target = namespace_name.empty() ? std::string("the whole registry")
                                                    : absl::StrCat("namespace '", namespace_name, "'");
  if (secret.empty()) {
    if (scope == Scope::kRead && anonymous_read_) return std::string("anonymous");
    return absl::UnauthenticatedError(absl::StrCat("a token is required to ", action, " ", target,
                                                   " (send 'Authorization: Bearer <token>')"));
  }
  const Token* found = nullptr;
  bool granted = false;
  for (const Token& token : tokens_) {
    if (token.secret.size() != secret.size() || CRYPTO_memcmp(token.secret.data(), secret.data(), secret.size()) != 0) {
      continue;
    }
    found = &token;
    bool namespace_matches = token.namespace_name == "*" || (!namespace_name.empty() && token.namespace_name == namespace_name);
    bool scope_matches = scope == Scope::kRead || token.scope == Scope::kWrite;
    if (namespace_matches && scope_matches) {
      granted = true;
      break;
    }
  }
  if (found == nullptr) return absl::UnauthenticatedError("the token is not known to this registry");
  if (!granted) {
    if (scope == Scope::kRead && anonymous_read_) return std::string("anonymous");
    return absl::PermissionDeniedError(absl::StrCat("token '", found->name, "' may not ", action, " ", target));
  }
  return found->name;
}

}  // namespace flotilla::registry
