#include "services/worker/gateway_registration.h"

#include <chrono>
#include <utility>

#include <grpcpp/grpcpp.h>

#include "services/common/logging.h"

namespace flotilla {
namespace {

// Load reports are rate-limited: a router needs the trend, not every step.
constexpr auto kReportInterval = std::chrono::milliseconds(50);
constexpr auto kHeartbeat = std::chrono::seconds(1);

}  // namespace

GatewayRegistration::GatewayRegistration(std::vector<std::string> gateway_addresses,
                                         std::function<flotilla::v1::WorkerReport()> report)
    : gateway_addresses_(std::move(gateway_addresses)), report_(std::move(report)) {}

GatewayRegistration::~GatewayRegistration() { Stop(); }

void GatewayRegistration::Start() {
  for (const std::string& address : gateway_addresses_) {
    threads_.emplace_back([this, address] { KeepRegistered(address); });
  }
}

void GatewayRegistration::ReportNow() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    ++report_generation_;
  }
  wake_.notify_all();
}

void GatewayRegistration::Stop() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (stopping_) return;
    stopping_ = true;
  }
  wake_.notify_all();
  for (std::thread& thread : threads_) thread.join();
  threads_.clear();
}

void GatewayRegistration::KeepRegistered(const std::string& address) {
  auto backoff = std::chrono::milliseconds(100);
  bool logged_failure = false;
  while (true) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (stopping_) return;
    }
    auto channel = grpc::CreateChannel(address, grpc::InsecureChannelCredentials());
    auto stub = flotilla::v1::WorkerRegistry::NewStub(channel);
    grpc::ClientContext context;
    std::unique_ptr<grpc::ClientReaderWriter<flotilla::v1::WorkerReport, flotilla::v1::RegistrationEvent>> stream =
        stub->Register(&context);
    bool registered = false;
    if (stream->Write(report_())) {
      flotilla::v1::RegistrationEvent event;
      if (stream->Read(&event) && event.accepted()) {
        registered = true;
        backoff = std::chrono::milliseconds(100);
        logged_failure = false;
        LogInfo("registered with gateway", {{"gateway", address}});
      } else if (!event.message().empty()) {
        LogError("gateway refused the registration", {{"gateway", address}, {"reason", event.message()}});
      }
    }
    // Reading in the background notices the gateway going away while we wait to report.
    std::atomic<bool> stream_alive{registered};
    std::thread reader;
    if (registered) {
      reader = std::thread([&] {
        flotilla::v1::RegistrationEvent event;
        while (stream->Read(&event)) {
        }
        stream_alive = false;
        wake_.notify_all();
      });
    }
    uint64_t seen_generation = 0;
    auto last_report = std::chrono::steady_clock::now();
    while (registered) {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait_for(lock, kHeartbeat, [&] { return stopping_ || report_generation_ != seen_generation || !stream_alive; });
      if (!stream_alive) break;
      const bool stopping = stopping_;
      seen_generation = report_generation_;
      lock.unlock();
      const auto since_last = std::chrono::steady_clock::now() - last_report;
      if (!stopping && since_last < kReportInterval) std::this_thread::sleep_for(kReportInterval - since_last);
      flotilla::v1::WorkerReport report = report_();
      report.clear_info();  // the info travels once, on the first message
      if (!stream->Write(report)) break;
      last_report = std::chrono::steady_clock::now();
      if (stopping) {
        stream->WritesDone();
        break;
      }
    }
    context.TryCancel();
    if (reader.joinable()) reader.join();
    stream->Finish();
    std::unique_lock<std::mutex> lock(mutex_);
    if (stopping_) return;
    if (registered) {
      LogWarning("lost the gateway; registering again", {{"gateway", address}});
    } else if (!logged_failure) {
      LogWarning("cannot register with the gateway yet; retrying", {{"gateway", address}});
      logged_failure = true;
    }
    wake_.wait_for(lock, backoff, [this] { return stopping_; });
    backoff = std::min(backoff * 2, std::chrono::milliseconds(2000));
  }
}

}  // namespace flotilla
