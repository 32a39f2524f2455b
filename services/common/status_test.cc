#include "services/common/status.h"

#include <gtest/gtest.h>

namespace flotilla {
namespace {

TEST(StatusConversionTest, KeepsCodeAndMessageBothWays) {
  const grpc::Status grpc_status = ToGrpcStatus(absl::AbortedError("branch main moved to abc123"));
  EXPECT_EQ(grpc_status.error_code(), grpc::StatusCode::ABORTED);
  EXPECT_EQ(grpc_status.error_message(), "branch main moved to abc123");
  const absl::Status back = FromGrpcStatus(grpc_status);
  EXPECT_EQ(back.code(), absl::StatusCode::kAborted);
  EXPECT_EQ(back.message(), "branch main moved to abc123");
  EXPECT_TRUE(ToGrpcStatus(absl::OkStatus()).ok());
}

TEST(NotYetImplementedTest, NamesTheRpcAndWhatItWaitsFor) {
  const grpc::Status status = NotYetImplemented("GatewayService.Generate", "issue #7 (serving)");
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNIMPLEMENTED);
  EXPECT_NE(status.error_message().find("GatewayService.Generate"), std::string::npos);
  EXPECT_NE(status.error_message().find("issue #7"), std::string::npos);
}

}  // namespace
}  // namespace flotilla
