// Tokens with read or write scope per namespace, shared by the gRPC service (metadata
// "authorization: Bearer <token>") and the Hub HTTP API (header "Authorization: Bearer <token>").
//
//   # tokens file: one token a line: <token> <name> <namespace or *> <read|write>
//   s3cret-alice alice acme write
//   s3cret-bot   bot   *    read
//
//   auto authorizer = Authorizer::Create(file_lines, /*anonymous_read=*/true);
//   absl::StatusOr<std::string> who = authorizer->Check("Bearer s3cret-alice", "acme", Scope::kWrite);
//
// With no tokens configured at all, everything is allowed (the laptop default). Write scope
// implies read. Immutable after Create; thread-safe.
#pragma once

#include <string>
#include <vector>

#include <absl/status/statusor.h>
#include <absl/strings/string_view.h>

namespace flotilla::registry {

enum class Scope { kRead, kWrite };

class Authorizer {
 public:
  // `token_lines`: the lines of a tokens file and/or --token flag values, in the format above
  // (blank lines and '#' comments are skipped).
  static absl::StatusOr<Authorizer> Create(const std::vector<std::string>& token_lines, bool anonymous_read);

  // The caller's name ("anonymous" without a token) when `authorization` (a header value, with or
  // without "Bearer ") grants `scope` on `namespace_name`; UNAUTHENTICATED for a missing or unknown
  // token, PERMISSION_DENIED for a token without that scope. "" namespace means "any namespace"
  // (registry-wide operations need a "*" token).
  absl::StatusOr<std::string> Check(absl::string_view authorization, const std::string& namespace_name,
                                    Scope scope) const;

  bool enabled() const { return !tokens_.empty(); }

 private:
  struct Token {
    std::string secret;
    std::string name;
    std::string namespace_name;  // "*" for every namespace
    Scope scope;
  };
  std::vector<Token> tokens_;
  bool anonymous_read_ = true;
};

}  // namespace flotilla::registry
