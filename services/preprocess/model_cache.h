// A bounded least-recently-used cache of loaded things (tokenizers, chat templates, image
// processors) keyed by what names their files exactly: a registry commit id, or a local folder
// and its files' modification times. Loads are single-flight: concurrent first requests for one
// key run the loader once and all get its result. Failed loads are not kept, so the next request
// tries again.
//
//   LoadingCache<PreprocessModel> cache(/*capacity=*/16);
//   bool hit = false;
//   absl::StatusOr<std::shared_ptr<const PreprocessModel>> model =
//       cache.GetOrLoad("acme/smol@9f1c...", [&] { return LoadModel(directory); }, &hit);
//
// Entries are handed out as shared_ptr, so evicting one never invalidates a call still using it.
// When every entry is still loading the cache may exceed its capacity until the loads finish.
//
// Thread-safety: every method may be called from any number of threads.
#pragma once

#include <cstddef>
#include <exception>
#include <functional>
#include <future>
#include <list>
#include <memory>
#include <mutex>
#include <string>

#include <absl/container/flat_hash_map.h>
#include <absl/status/statusor.h>
#include <absl/strings/str_cat.h>

namespace flotilla::preprocess {

template <typename Value>
class LoadingCache {
 public:
  using Result = absl::StatusOr<std::shared_ptr<const Value>>;
  using Loader = std::function<Result()>;

  explicit LoadingCache(size_t capacity) : capacity_(capacity == 0 ? 1 : capacity) {}

  // The value cached under `key`, or the one `load` returns (run at most once at a time per key:
  // other callers wait for it). `*hit` is true when no load ran for this call.
  Result GetOrLoad(const std::string& key, const Loader& load, bool* hit) {
    std::promise<Result> promise;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      if (auto found = slots_.find(key); found != slots_.end()) {
        recency_.splice(recency_.begin(), recency_, found->second.position);
        std::shared_future<Result> future = found->second.future;
        lock.unlock();
        *hit = true;
        return future.get();
      }
      recency_.push_front(key);
      slots_.emplace(key, Slot{promise.get_future().share(), false, recency_.begin()});
    }
    *hit = false;
    Result result = absl::InternalError("LoadingCache: the loader did not run");
    try {
      result = load();
    } catch (const std::exception& error) {
      result = absl::InternalError(absl::StrCat("loading ", key, ": ", error.what()));
    } catch (...) {
      result = absl::InternalError(absl::StrCat("loading ", key, ": unknown exception"));
    }
    promise.set_value(result);
    std::lock_guard<std::mutex> lock(mutex_);
    auto slot = slots_.find(key);
    if (slot != slots_.end()) {
      if (result.ok()) {
        slot->second.ready = true;
      } else {
        recency_.erase(slot->second.position);
        slots_.erase(slot);
      }
    }
    EvictLocked();
    return result;
  }

  size_t size() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return slots_.size();
  }
  size_t capacity() const { return capacity_; }

 private:
  struct Slot {
    std::shared_future<Result> future;
    bool ready = false;  // loaded; only ready slots are evicted (waiters hold the others' futures)
    std::list<std::string>::iterator position;
  };

  void EvictLocked() {
    auto candidate = recency_.end();
    while (slots_.size() > capacity_ && candidate != recency_.begin()) {
      --candidate;
      auto slot = slots_.find(*candidate);
      if (!slot->second.ready) continue;
      slots_.erase(slot);
      candidate = recency_.erase(candidate);
    }
  }

  const size_t capacity_;
  mutable std::mutex mutex_;
  std::list<std::string> recency_;  // most recently used first
  absl::flat_hash_map<std::string, Slot> slots_;
};

}  // namespace flotilla::preprocess
