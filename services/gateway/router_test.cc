#include "services/gateway/router.h"

#include <vector>

#include <gtest/gtest.h>

namespace flotilla::gateway {
namespace {

flotilla::v1::WorkerReport Report(const std::string& model, const std::string& address, int waiting = 0,
                                  const std::string& task = "generate") {
  flotilla::v1::WorkerReport report;
  report.mutable_info()->set_served_model_name(model);
  report.mutable_info()->set_task(task);
  report.mutable_info()->set_kv_block_size(4);
  report.mutable_info()->mutable_model()->set_local_path("/models/" + model);
  report.set_address(address);
  report.mutable_load()->set_num_requests_waiting(waiting);
  return report;
}

TEST(RouterTest, UnknownModelIsNotFoundAndNamesTheServedOnes) {
  Router router;
  ASSERT_TRUE(router.Add(Report("smollm2", "a:1")).ok());
  absl::StatusOr<Router::Pick> pick = router.Choose("llama", std::vector<int32_t>{1, 2});
  ASSERT_TRUE(absl::IsNotFound(pick.status()));
  EXPECT_NE(pick.status().message().find("llama"), std::string::npos);
  EXPECT_NE(pick.status().message().find("smollm2"), std::string::npos);
}

TEST(RouterTest, PicksTheLeastOutstandingReplica) {
  Router router;
  const int64_t a = *router.Add(Report("m", "a:1"));
  const int64_t b = *router.Add(Report("m", "b:1"));
  std::vector<int32_t> prompt = {1, 2, 3};
  EXPECT_EQ(router.Choose("m", prompt)->replica_id, a);   // tie: the first
  EXPECT_EQ(router.Choose("m", std::vector<int32_t>{9})->replica_id, b);  // a has one outstanding
  router.Release(a);
  router.UpdateLoad(a, Report("m", "a:1", /*waiting=*/10).load());
  EXPECT_EQ(router.Choose("m", std::vector<int32_t>{7})->replica_id, b);  // a reports a queue
}

TEST(RouterTest, PrefersTheReplicaHoldingThePrefixWhenLoadsAreClose) {
  Router router;
  const int64_t a = *router.Add(Report("m", "a:1"));
  const int64_t b = *router.Add(Report("m", "b:1"));
  const std::vector<int32_t> system_prompt = {5, 6, 7, 8, 9, 10, 11, 12, 1};
  ASSERT_EQ(router.Choose("m", system_prompt)->replica_id, a);
  router.Release(a);
  ASSERT_EQ(router.Choose("m", std::vector<int32_t>{1})->replica_id, a);  // keep a one busier
  std::vector<int32_t> follow_up = system_prompt;
  follow_up.insert(follow_up.end(), {40, 41, 42});
  EXPECT_EQ(router.Choose("m", follow_up)->replica_id, a);  // prefix wins within the slack
  // Far more loaded: the prefix no longer wins.
  router.UpdateLoad(a, Report("m", "a:1", /*waiting=*/Router::kAffinitySlack + 5).load());
  EXPECT_EQ(router.Choose("m", follow_up)->replica_id, b);
}

TEST(RouterTest, DrainingAndExcludedReplicasAreSkipped) {
  Router router;
  const int64_t a = *router.Add(Report("m", "a:1"));
  flotilla::v1::WorkerLoad draining;
  draining.set_draining(true);
  router.UpdateLoad(a, draining);
  EXPECT_TRUE(absl::IsUnavailable(router.Choose("m", std::vector<int32_t>{1}).status()));
  const int64_t b = *router.Add(Report("m", "b:1"));
  EXPECT_EQ(router.Choose("m", std::vector<int32_t>{1})->replica_id, b);
  EXPECT_TRUE(absl::IsUnavailable(router.Choose("m", std::vector<int32_t>{1}, {b}).status()));
}

TEST(RouterTest, RemovedReplicasLeaveAndTheNameIsRefusedForAnotherModel) {
  Router router;
  const int64_t a = *router.Add(Report("m", "a:1"));
  flotilla::v1::WorkerReport other = Report("m", "c:1");
  other.mutable_info()->mutable_model()->set_local_path("/models/other");
  EXPECT_TRUE(absl::IsFailedPrecondition(router.Add(other).status()));
  router.Remove(a);
  // Served once, gone now: UNAVAILABLE (retry), not NOT_FOUND.
  EXPECT_TRUE(absl::IsUnavailable(router.Choose("m", std::vector<int32_t>{1}).status()));
  EXPECT_EQ(router.ServedNames(), "none");
  EXPECT_TRUE(router.Add(other).ok());
  ASSERT_EQ(router.Models().size(), 1u);
  EXPECT_EQ(router.Models()[0].replicas, 1);
}

}  // namespace
}  // namespace flotilla::gateway
