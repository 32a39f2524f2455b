// The router: which worker replicas serve which model, what load each reports, and which one a
// new request goes to. Replicas arrive and leave through the WorkerRegistry streams
// (gateway_service.cc); this class is the policy only — no gRPC calls, no threads.
//
// A request goes to the replica of its model with the least outstanding work: the requests this
// gateway has in flight there plus the ones the replica reports waiting (other gateways' included).
// Among replicas within kAffinitySlack of the least loaded, the one that most recently served the
// longest prefix of the prompt (counted in whole KV blocks) wins, so its prefix cache hits.
//
//   Router router;
//   int64_t id = router.Add(report);                         // a worker registered
//   absl::StatusOr<Router::Pick> pick = router.Choose("smollm2", prompt_ids);
//   ... stream from pick->address ...; router.Release(pick->replica_id);
//   router.Remove(id);                                        // its stream ended
//
// Thread-safety: every method is thread-safe.
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "flotilla/v1/gateway.pb.h"

namespace flotilla::gateway {

class Router {
 public:
  struct Pick {
    int64_t replica_id = 0;
    std::string address;
    flotilla::v1::WorkerInfo info;
  };
  struct ModelSummary {
    std::string name;
    flotilla::v1::WorkerInfo info;  // of one live replica (all serve the same model)
    int replicas = 0;
    int num_requests_running = 0;   // as the replicas report
    int num_requests_waiting = 0;
    int kv_blocks_used = 0;
    int kv_blocks_total = 0;
  };

  // Requests within this many outstanding requests of the least loaded replica count as "close".
  static constexpr int kAffinitySlack = 2;
  // Prefix hashes remembered per replica (a few hundred prompts' worth of leading blocks).
  static constexpr size_t kRememberedPrefixes = 4096;

  // A new replica from its first report. FAILED_PRECONDITION when another replica already serves
  // a different model (or task) under the same name.
  absl::StatusOr<int64_t> Add(const flotilla::v1::WorkerReport& report);
  void UpdateLoad(int64_t replica_id, const flotilla::v1::WorkerLoad& load);
  void Remove(int64_t replica_id);

  // NOT_FOUND (naming the served models) for an unknown model; UNAVAILABLE when every replica of
  // it is draining or gone. Counts the request as outstanding on the chosen replica until Release.
  // `excluded` replicas are skipped (a failover does not go back to the replica that just failed).
  absl::StatusOr<Pick> Choose(const std::string& model, std::span<const int32_t> prompt_token_ids,
                              const std::vector<int64_t>& excluded = {});
  void Release(int64_t replica_id);
  // The model's info without choosing (for validation before routing).
  absl::StatusOr<flotilla::v1::WorkerInfo> Info(const std::string& model) const;

  std::vector<ModelSummary> Models() const;
  // "a, b" or "none".
  std::string ServedNames() const;

 private:
  struct Replica {
    std::string model;
    std::string address;
    int32_t replica_index = 0;
    flotilla::v1::WorkerInfo info;
    flotilla::v1::WorkerLoad load;
    int outstanding = 0;  // this gateway's requests in flight there
    std::deque<uint64_t> recent_prefixes;  // chained block hashes, newest last
  };
  static std::vector<uint64_t> PrefixHashes(std::span<const int32_t> token_ids, int block_size);
  std::string ServedNamesLocked() const;

  mutable std::mutex mutex_;
  int64_t next_id_ = 1;                 // guarded by mutex_
  // Names that had replicas once: asking for one whose replicas are all gone is UNAVAILABLE (retry
  // later), not NOT_FOUND (a typo).
  std::set<std::string> known_names_;   // guarded by mutex_
  std::map<int64_t, Replica> replicas_;  // guarded by mutex_
};

}  // namespace flotilla::gateway
