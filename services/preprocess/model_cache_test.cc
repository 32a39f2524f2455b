#include "services/preprocess/model_cache.h"

#include <atomic>
#include <chrono>
#include <stdexcept>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

namespace flotilla::preprocess {
namespace {

using Cache = LoadingCache<int>;

Cache::Loader Returning(int value, std::atomic<int>* loads) {
  return [value, loads]() -> Cache::Result {
    ++*loads;
    return std::make_shared<const int>(value);
  };
}

TEST(LoadingCacheTest, LoadsOnceThenHits) {
  Cache cache(4);
  std::atomic<int> loads = 0;
  bool hit = true;
  auto first = cache.GetOrLoad("a", Returning(1, &loads), &hit);
  ASSERT_TRUE(first.ok());
  EXPECT_FALSE(hit);
  auto second = cache.GetOrLoad("a", Returning(2, &loads), &hit);
  ASSERT_TRUE(second.ok());
  EXPECT_TRUE(hit);
  EXPECT_EQ(**second, 1);
  EXPECT_EQ(loads, 1);
}

TEST(LoadingCacheTest, EvictsLeastRecentlyUsed) {
  Cache cache(2);
  std::atomic<int> loads = 0;
  bool hit = false;
  ASSERT_TRUE(cache.GetOrLoad("a", Returning(1, &loads), &hit).ok());
  ASSERT_TRUE(cache.GetOrLoad("b", Returning(2, &loads), &hit).ok());
  ASSERT_TRUE(cache.GetOrLoad("a", Returning(1, &loads), &hit).ok());  // a is now the most recent
  ASSERT_TRUE(cache.GetOrLoad("c", Returning(3, &loads), &hit).ok());  // evicts b
  EXPECT_EQ(cache.size(), 2u);
  ASSERT_TRUE(cache.GetOrLoad("a", Returning(1, &loads), &hit).ok());
  EXPECT_TRUE(hit);
  ASSERT_TRUE(cache.GetOrLoad("b", Returning(2, &loads), &hit).ok());
  EXPECT_FALSE(hit);
  EXPECT_EQ(loads, 4);
}

TEST(LoadingCacheTest, FailuresAreNotKept) {
  Cache cache(2);
  bool hit = false;
  auto failed = cache.GetOrLoad("a", [] { return Cache::Result(absl::NotFoundError("no such model")); }, &hit);
  EXPECT_TRUE(absl::IsNotFound(failed.status()));
  EXPECT_EQ(cache.size(), 0u);
  std::atomic<int> loads = 0;
  auto loaded = cache.GetOrLoad("a", Returning(7, &loads), &hit);
  ASSERT_TRUE(loaded.ok());
  EXPECT_FALSE(hit);
  EXPECT_EQ(**loaded, 7);
}

TEST(LoadingCacheTest, ExceptionsBecomeInternalErrors) {
  Cache cache(2);
  bool hit = false;
  auto failed = cache.GetOrLoad("a", []() -> Cache::Result { throw std::runtime_error("boom"); }, &hit);
  EXPECT_TRUE(absl::IsInternal(failed.status()));
  EXPECT_NE(failed.status().message().find("boom"), std::string::npos);
}

TEST(LoadingCacheTest, ConcurrentFirstLoadsRunTheLoaderOnce) {
  Cache cache(2);
  std::atomic<int> loads = 0;
  auto slow = [&]() -> Cache::Result {
    ++loads;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    return std::make_shared<const int>(42);
  };
  std::vector<std::thread> threads;
  std::atomic<int> hits = 0, values = 0;
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&] {
      bool hit = false;
      auto result = cache.GetOrLoad("model", slow, &hit);
      if (hit) ++hits;
      if (result.ok() && **result == 42) ++values;
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(loads, 1);
  EXPECT_EQ(hits, 7);
  EXPECT_EQ(values, 8);
}

TEST(LoadingCacheTest, EvictedEntriesStayValidForHolders) {
  Cache cache(1);
  std::atomic<int> loads = 0;
  bool hit = false;
  auto held = cache.GetOrLoad("a", Returning(1, &loads), &hit);
  ASSERT_TRUE(cache.GetOrLoad("b", Returning(2, &loads), &hit).ok());
  EXPECT_EQ(cache.size(), 1u);
  EXPECT_EQ(**held, 1);
}

}  // namespace
}  // namespace flotilla::preprocess
