#include "services/gateway/router.h"

#include <algorithm>
#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace flotilla::gateway {

absl::StatusOr<int64_t> Router::Add(const flotilla::v1::WorkerReport& report) {
  const flotilla::v1::WorkerInfo& info = report.info();
  if (info.served_model_name().empty()) return absl::InvalidArgumentError("Register: the first report has no served_model_name");
  if (report.address().empty()) return absl::InvalidArgumentError("Register: the first report has no address");
  std::lock_guard<std::mutex> lock(mutex_);
  for (const auto& [id, replica] : replicas_) {
    if (replica.model != info.served_model_name()) continue;
    const bool same_source = replica.info.model().SerializeAsString() == info.model().SerializeAsString() &&
                             replica.info.task() == info.task();
    if (!same_source) {
      return absl::FailedPreconditionError(absl::StrCat(
          "Register: the name ", info.served_model_name(), " is already served by ", replica.address,
          " for another model or task; pick another --served_model_name"));
    }
  }
  const int64_t id = next_id_++;
  known_names_.insert(info.served_model_name());
  Replica& replica = replicas_[id];
  replica.model = info.served_model_name();
  replica.address = report.address();
  replica.replica_index = report.replica();
  replica.info = info;
  replica.load = report.load();
  return id;
}

void Router::UpdateLoad(int64_t replica_id, const flotilla::v1::WorkerLoad& load) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto found = replicas_.find(replica_id);
  if (found != replicas_.end()) found->second.load = load;
}

void Router::Remove(int64_t replica_id) {
  std::lock_guard<std::mutex> lock(mutex_);
  replicas_.erase(replica_id);
}

std::vector<uint64_t> Router::PrefixHashes(std::span<const int32_t> token_ids, int block_size) {
  // FNV-1a chained over whole blocks: hash i covers blocks 0..i, as the worker's prefix cache.
  std::vector<uint64_t> hashes;
  if (block_size <= 0) return hashes;
  uint64_t hash = 1469598103934665603ULL;
  const size_t full_blocks = token_ids.size() / static_cast<size_t>(block_size);
  for (size_t block = 0; block < full_blocks; ++block) {
    for (int i = 0; i < block_size; ++i) {
      hash ^= static_cast<uint32_t>(token_ids[block * block_size + i]);
      hash *= 1099511628211ULL;
    }
    hashes.push_back(hash);
  }
  return hashes;
}

absl::StatusOr<Router::Pick> Router::Choose(const std::string& model, std::span<const int32_t> prompt_token_ids,
                                            const std::vector<int64_t>& excluded) {
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<std::pair<int64_t, Replica*>> candidates;
  bool known = false;
  for (auto& [id, replica] : replicas_) {
    if (replica.model != model) continue;
    known = true;
    if (replica.load.draining()) continue;
    if (std::find(excluded.begin(), excluded.end(), id) != excluded.end()) continue;
    candidates.emplace_back(id, &replica);
  }
  if (!known && known_names_.contains(model)) {
    return absl::UnavailableError(absl::StrCat("no replica of ", model, " is up (its workers are gone); retry later"));
  }
  if (!known) {
    return absl::NotFoundError(absl::StrCat("The model `", model, "` does not exist. Served models: ", ServedNamesLocked()));
  }
  if (candidates.empty()) {
    return absl::UnavailableError(absl::StrCat("every replica of ", model, " is draining or gone; retry shortly"));
  }
  auto work = [](const Replica& replica) { return replica.outstanding + replica.load.num_requests_waiting(); };
  int least = std::numeric_limits<int>::max();
  for (const auto& [id, replica] : candidates) least = std::min(least, work(*replica));

  const int block_size = candidates.front().second->info.kv_block_size();
  const std::vector<uint64_t> hashes = PrefixHashes(prompt_token_ids, block_size);
  std::pair<int64_t, Replica*> best = {0, nullptr};
  size_t best_prefix = 0;
  int best_work = std::numeric_limits<int>::max();
  for (const auto& [id, replica] : candidates) {
    const int replica_work = work(*replica);
    if (replica_work > least + kAffinitySlack) continue;
    size_t prefix = 0;
    for (size_t i = hashes.size(); i > 0; --i) {
      const auto& remembered = replica->recent_prefixes;
      if (std::find(remembered.rbegin(), remembered.rend(), hashes[i - 1]) != remembered.rend()) {
        prefix = i;
        break;
      }
    }
    if (best.second == nullptr || prefix > best_prefix || (prefix == best_prefix && replica_work < best_work)) {
      best = {id, replica};
      best_prefix = prefix;
      best_work = replica_work;
    }
  }
  Replica& chosen = *best.second;
  ++chosen.outstanding;
  for (uint64_t hash : hashes) {
    chosen.recent_prefixes.push_back(hash);
    if (chosen.recent_prefixes.size() > kRememberedPrefixes) chosen.recent_prefixes.pop_front();
  }
  return Pick{best.first, chosen.address, chosen.info};
}

void Router::Release(int64_t replica_id) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto found = replicas_.find(replica_id);
  if (found != replicas_.end() && found->second.outstanding > 0) --found->second.outstanding;
}

absl::StatusOr<flotilla::v1::WorkerInfo> Router::Info(const std::string& model) const {
  std::lock_guard<std::mutex> lock(mutex_);
  for (const auto& [id, replica] : replicas_) {
    if (replica.model == model) return replica.info;
  }
  if (known_names_.contains(model)) {
    return absl::UnavailableError(absl::StrCat("no replica of ", model, " is up (its workers are gone); retry later"));
  }
  return absl::NotFoundError(absl::StrCat("The model `", model, "` does not exist. Served models: ", ServedNamesLocked()));
}

std::vector<Router::ModelSummary> Router::Models() const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::map<std::string, ModelSummary> by_name;
  for (const auto& [id, replica] : replicas_) {
    ModelSummary& summary = by_name[replica.model];
    summary.name = replica.model;
    summary.info = replica.info;
    ++summary.replicas;
    summary.num_requests_running += replica.load.num_requests_running();
    summary.num_requests_waiting += replica.load.num_requests_waiting();
    summary.kv_blocks_used += replica.load.kv_blocks_used();
    summary.kv_blocks_total += replica.load.kv_blocks_total();
  }
  std::vector<ModelSummary> models;
  for (auto& [name, summary] : by_name) models.push_back(std::move(summary));
  return models;
}

std::string Router::ServedNames() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return ServedNamesLocked();
}

std::string Router::ServedNamesLocked() const {
  std::vector<std::string> names;
  for (const auto& [id, replica] : replicas_) {
    if (std::find(names.begin(), names.end(), replica.model) == names.end()) names.push_back(replica.model);
  }
  std::sort(names.begin(), names.end());
  return names.empty() ? "none" : absl::StrJoin(names, ", ");
}

}  // namespace flotilla::gateway
