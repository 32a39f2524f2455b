// The stack in one process: a real gRPC server on loopback whose handler runs a LibTorch op and
// records a prometheus-cpp metric, called through a real channel. A symbol clash between the torch
// wheel's bundled libraries and Debian's gRPC/protobuf would fail here first.
#include "services/worker/worker_service.h"

#include <ATen/ATen.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "services/common/metrics.h"
#include "services/common/request_id.h"
#include "services/common/rpc_interceptor.h"
#include "services/common/tensor_proto.h"

namespace flotilla {
namespace {

class WorkerServiceTest : public testing::Test {
 protected:
  void SetUp() override {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    builder.RegisterService(&service_);
    std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> interceptors;
    interceptors.push_back(MakeRpcInterceptorFactory());
    builder.experimental().SetInterceptorCreators(std::move(interceptors));
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    ASSERT_GT(port_, 0);
    stub_ = flotilla::v1::WorkerService::NewStub(
        grpc::CreateChannel("127.0.0.1:" + std::to_string(port_), grpc::InsecureChannelCredentials()));
  }
  void TearDown() override { server_->Shutdown(); }

  WorkerServiceImpl service_;
  int port_ = 0;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<flotilla::v1::WorkerService::Stub> stub_;
};

TEST_F(WorkerServiceTest, MatmulOverGrpcMatchesATenAndCountsInPrometheus) {
  const at::Tensor a = at::arange(6, at::kFloat).reshape({2, 3});
  const at::Tensor b = at::arange(12, at::kFloat).reshape({3, 4});
  flotilla::v1::MatmulRequest request;
  ASSERT_TRUE(TensorToProto(a, request.mutable_a()).ok());
  ASSERT_TRUE(TensorToProto(b, request.mutable_b()).ok());
  request.set_repeat(3);
  flotilla::v1::MatmulResponse response;
  grpc::ClientContext context;
  AttachRequestId(&context, "test-request-42");
  const grpc::Status status = stub_->Matmul(&context, request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();

  absl::StatusOr<at::Tensor> product = TensorFromProto(response.product());
  ASSERT_TRUE(product.ok()) << product.status();
  EXPECT_TRUE(at::equal(*product, at::matmul(a, b)));

  // The request id travels back in the response's initial metadata.
  auto echoed = context.GetServerInitialMetadata().find("x-request-id");
  ASSERT_NE(echoed, context.GetServerInitialMetadata().end());
  EXPECT_EQ(std::string(echoed->second.data(), echoed->second.size()), "test-request-42");

  const std::string metrics = RenderMetrics();
  EXPECT_NE(metrics.find("flotilla_worker_matmul_products_total 3"), std::string::npos) << metrics;
  EXPECT_NE(metrics.find("flotilla_grpc_server_handled_total{code=\"OK\",method=\"/flotilla.v1.WorkerService/Matmul\"} 1"),
            std::string::npos) << metrics;
}

TEST_F(WorkerServiceTest, MatmulRejectsMismatchedShapesWithInvalidArgument) {
  flotilla::v1::MatmulRequest request;
  ASSERT_TRUE(TensorToProto(at::ones({2, 3}), request.mutable_a()).ok());
  ASSERT_TRUE(TensorToProto(at::ones({4, 5}), request.mutable_b()).ok());
  flotilla::v1::MatmulResponse response;
  grpc::ClientContext context;
  const grpc::Status status = stub_->Matmul(&context, request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(status.error_message().find("a is [2, 3] and b is [4, 5]"), std::string::npos) << status.error_message();
}

TEST_F(WorkerServiceTest, MatmulRejectsDataThatDisagreesWithTheShape) {
  flotilla::v1::MatmulRequest request;
  ASSERT_TRUE(TensorToProto(at::ones({2, 2}), request.mutable_a()).ok());
  ASSERT_TRUE(TensorToProto(at::ones({2, 2}), request.mutable_b()).ok());
  request.mutable_b()->mutable_data()->resize(7);
  flotilla::v1::MatmulResponse response;
  grpc::ClientContext context;
  const grpc::Status status = stub_->Matmul(&context, request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(status.error_message().find("needs 16 bytes but data has 7"), std::string::npos) << status.error_message();
}

TEST_F(WorkerServiceTest, AWorkerWithoutAModelSaysHowToGiveItOne) {
  flotilla::v1::ForwardRequest request;
  flotilla::v1::ForwardResponse response;
  grpc::ClientContext context;
  const grpc::Status status = stub_->Forward(&context, request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(status.error_message().find("--model"), std::string::npos);

  flotilla::v1::WorkerGenerateRequest generate;
  generate.set_request_id("r");
  generate.add_prompt_token_ids(1);
  generate.set_max_tokens(1);
  grpc::ClientContext generate_context;
  auto reader = stub_->Generate(&generate_context, generate);
  flotilla::v1::WorkerGenerateResponse ignored;
  EXPECT_FALSE(reader->Read(&ignored));
  const grpc::Status generate_status = reader->Finish();
  EXPECT_EQ(generate_status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(generate_status.error_message().find("--model"), std::string::npos);
}

}  // namespace
}  // namespace flotilla
