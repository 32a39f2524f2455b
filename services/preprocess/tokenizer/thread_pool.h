// A fixed pool of worker threads for data-parallel loops (batch encoding).
//
//   ThreadPool::Shared().ParallelFor(texts.size(), [&](size_t i) { results[i] = Encode(texts[i]); });
//
// ParallelFor blocks until every index ran; the calling thread works too. Thread-safe: concurrent
// ParallelFor calls share the workers.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace flotilla::tokenizer {

class ThreadPool {
 public:
  explicit ThreadPool(size_t threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  // One worker per hardware thread, created on first use.
  static ThreadPool& Shared();
  size_t size() const { return workers_.size() + 1; }

  void ParallelFor(size_t count, const std::function<void(size_t)>& body);

 private:
  void WorkerLoop();
  std::vector<std::thread> workers_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::function<void()>> tasks_;
  bool stopping_ = false;
};

}  // namespace flotilla::tokenizer
