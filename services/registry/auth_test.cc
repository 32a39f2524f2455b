#include "services/registry/auth.h"

#include <gtest/gtest.h>

namespace flotilla::registry {
namespace {

TEST(AuthorizerTest, ScopesPerNamespace) {
  auto authorizer = Authorizer::Create({"# comment", "alice-secret alice acme write", "bot-secret bot * read"}, false);
  ASSERT_TRUE(authorizer.ok());
  EXPECT_EQ(*authorizer->Check("Bearer alice-secret", "acme", Scope::kWrite), "alice");
  EXPECT_EQ(*authorizer->Check("alice-secret", "acme", Scope::kRead), "alice");
  EXPECT_EQ(authorizer->Check("Bearer alice-secret", "other", Scope::kWrite).status().code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(*authorizer->Check("Bearer bot-secret", "other", Scope::kRead), "bot");
  EXPECT_EQ(authorizer->Check("Bearer bot-secret", "acme", Scope::kWrite).status().code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(authorizer->Check("", "acme", Scope::kRead).status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(authorizer->Check("Bearer wrong", "acme", Scope::kRead).status().code(), absl::StatusCode::kUnauthenticated);
}

TEST(AuthorizerTest, AnonymousReadAndNoTokens) {
  auto open = Authorizer::Create({}, false);
  EXPECT_TRUE(open->Check("", "acme", Scope::kWrite).ok());
  auto anonymous = Authorizer::Create({"s alice acme write"}, true);
  EXPECT_EQ(*anonymous->Check("", "acme", Scope::kRead), "anonymous");
  EXPECT_EQ(anonymous->Check("", "acme", Scope::kWrite).status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_FALSE(Authorizer::Create({"only three fields"}, true).ok());
}

}  // namespace
}  // namespace flotilla::registry
