// A worker's registration with its gateways: one WorkerRegistry.Register stream per gateway
// address, opened at start and kept open; the first message says who the worker is (model,
// replica, address, capacity), later ones report its load — after engine steps, at most every
// kReportInterval, and at least once a second as a heartbeat. A gateway drops the replica when the
// stream ends, so a worker that dies stops receiving traffic; a gateway that restarts gets the
// worker back because the worker reconnects (with backoff) whenever its stream breaks. The same
// works between pods: the gateway addresses come from a flag (a Kubernetes Service name that
// resolves to every gateway pod works too, see deploy/README.md).
//
//   GatewayRegistration registration({"127.0.0.1:7706"}, report_source);
//   registration.Start();   // returns at once; threads keep the streams
//   registration.ReportNow();   // after a step: push the new load soon
//   registration.Stop();    // drain: a last report (draining = true), then close
//
// Thread-safety: all methods may be called from any thread.
#pragma once

#include <atomic>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "flotilla/v1/gateway.grpc.pb.h"

namespace flotilla {

class GatewayRegistration {
 public:
  // `report` builds the current report (info and address included); called from the streams'
  // threads.
  GatewayRegistration(std::vector<std::string> gateway_addresses,
                      std::function<flotilla::v1::WorkerReport()> report);
  ~GatewayRegistration();

  void Start();
  void ReportNow();
  void Stop();

 private:
  void KeepRegistered(const std::string& address);

  std::vector<std::string> gateway_addresses_;
  std::function<flotilla::v1::WorkerReport()> report_;
  std::mutex mutex_;
  std::condition_variable wake_;
  bool stopping_ = false;       // guarded by mutex_
  uint64_t report_generation_ = 0;  // guarded by mutex_; bumped by ReportNow
  std::vector<std::thread> threads_;
};

}  // namespace flotilla
