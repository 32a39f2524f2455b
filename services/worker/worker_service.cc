#include "services/worker/worker_service.h"

#include <thread>

#include <ATen/ATen.h>
#include <absl/strings/str_cat.h>
#include <absl/strings/str_join.h>
#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <torch/version.h>

#include "services/common/logging.h"
#include "services/common/metrics.h"
#include "services/common/rejecting_reactor.h"
#include "services/common/request_id.h"
#include "services/common/status.h"
#include "services/common/tensor_proto.h"

namespace flotilla {
namespace {

using flotilla::v1::MatmulRequest;
using flotilla::v1::MatmulResponse;

struct WorkerMetrics {
  prometheus::Counter& matmul_products;
  prometheus::Counter& matmul_flops;
  prometheus::Gauge& matmul_in_flight;

  static WorkerMetrics& Get() {
    static WorkerMetrics* metrics = new WorkerMetrics{
        prometheus::BuildCounter()
            .Name("flotilla_worker_matmul_products_total")
            .Help("Matrix products computed by the Matmul RPC")
            .Register(MetricsRegistry())
            .Add({}),
        prometheus::BuildCounter()
            .Name("flotilla_worker_matmul_flops_total")
            .Help("Floating-point operations (2*m*k*n per product) done by the Matmul RPC")
            .Register(MetricsRegistry())
            .Add({}),
        prometheus::BuildGauge()
            .Name("flotilla_worker_matmul_in_flight")
            .Help("Matmul calls being computed now")
            .Register(MetricsRegistry())
            .Add({}),
    };
    return *metrics;
  }
};

std::string ShapeText(const at::Tensor& tensor) {
  return absl::StrCat("[", absl::StrJoin(tensor.sizes(), ", "), "]");
}

absl::Status ComputeMatmul(const MatmulRequest& request, grpc::CallbackServerContext* context,
                           MatmulResponse* response) {
  absl::StatusOr<at::Tensor> a = TensorFromProto(request.a());
  if (!a.ok()) return absl::InvalidArgumentError(absl::StrCat("Matmul: a: ", a.status().message()));
  absl::StatusOr<at::Tensor> b = TensorFromProto(request.b());
  if (!b.ok()) return absl::InvalidArgumentError(absl::StrCat("Matmul: b: ", b.status().message()));
  if (a->dim() != 2 || b->dim() != 2 || a->scalar_type() != at::kFloat || b->scalar_type() != at::kFloat) {
    return absl::InvalidArgumentError(absl::StrCat("Matmul: expected two 2-D float32 tensors but got a ",
                                                   ShapeText(*a), " ", c10::toString(a->scalar_type()), " and b ",
                                                   ShapeText(*b), " ", c10::toString(b->scalar_type())));
  }
  if (a->size(1) != b->size(0)) {
    return absl::InvalidArgumentError(absl::StrCat("Matmul: a is ", ShapeText(*a), " and b is ", ShapeText(*b),
                                                   ": a's columns must equal b's rows"));
  }
  const int repeat = std::max(1, request.repeat());
  const double flops_per_product = 2.0 * a->size(0) * a->size(1) * b->size(1);
  WorkerMetrics& metrics = WorkerMetrics::Get();
  at::Tensor product;
  for (int iteration = 0; iteration < repeat; ++iteration) {
    if (context->IsCancelled()) return absl::CancelledError("Matmul: cancelled by the client or by drain");
    product = at::matmul(*a, *b);
    metrics.matmul_products.Increment();
    metrics.matmul_flops.Increment(flops_per_product);
  }
  return TensorToProto(product, response->mutable_product());
}

}  // namespace

WorkerServiceImpl::WorkerServiceImpl() { WorkerMetrics::Get(); }

grpc::ServerUnaryReactor* WorkerServiceImpl::Matmul(grpc::CallbackServerContext* context,
                                                    const MatmulRequest* request, MatmulResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  // Tensor work leaves gRPC's callback threads, which must never block for long.
  std::thread([context, request, response, reactor] {
    WorkerMetrics& metrics = WorkerMetrics::Get();
    metrics.matmul_in_flight.Increment();
    absl::Status status;
    try {
      status = ComputeMatmul(*request, context, response);
    } catch (const c10::Error& error) {
      status = absl::InternalError(absl::StrCat("Matmul: ", error.what_without_backtrace()));
    }
    metrics.matmul_in_flight.Decrement();
    reactor->Finish(ToGrpcStatus(status));
  }).detach();
  return reactor;
}

grpc::ServerUnaryReactor* WorkerServiceImpl::GetWorkerInfo(grpc::CallbackServerContext* context,
                                                           const flotilla::v1::GetWorkerInfoRequest*,
                                                           flotilla::v1::WorkerInfo* response) {
  response->set_world_size(1);
  response->set_device("cpu");
  response->set_torch_version(TORCH_VERSION);
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* WorkerServiceImpl::LoadModel(grpc::CallbackServerContext* context,
                                                       const flotilla::v1::LoadModelRequest*,
                                                       flotilla::v1::LoadModelResponse*) {
  return RejectUnary(context, NotYetImplemented("WorkerService.LoadModel", "issue #5 (models)"));
}

grpc::ServerUnaryReactor* WorkerServiceImpl::Forward(grpc::CallbackServerContext* context,
                                                     const flotilla::v1::ForwardRequest*,
                                                     flotilla::v1::ForwardResponse*) {
  return RejectUnary(context, NotYetImplemented("WorkerService.Forward", "issue #5 (models)"));
}


}  // namespace flotilla
