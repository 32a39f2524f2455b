// The metadata store on both backends: SQLite (the embedded default) and PostgreSQL (a real
// server the test starts; see postgres_test_server.h). Two stores over one database stand for two
// registry replicas: their racing commits must all land, in one linear history, with no commit
// lost or mixed.
#include "services/registry/metadata_store.h"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <map>
#include <thread>

#include <absl/strings/match.h>
#include <absl/strings/str_cat.h>
#include <gtest/gtest.h>

#include "services/registry/postgres_test_server.h"

namespace flotilla::registry {
namespace {

class MetadataBackendTest : public testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (GetParam() == "postgres") {
      std::optional<std::string> url = PostgresTestServer::NewDatabase();
      if (!url) GTEST_SKIP() << PostgresTestServer::unavailable_reason();
      location_ = *url;
    } else {
      std::string pattern = (std::filesystem::temp_directory_path() / "metadata_test_XXXXXX").string();
      location_ = std::string(mkdtemp(pattern.data())) + "/metadata.sqlite3";
    }
  }

  // A new store over the test's database (a second one stands for a second replica).
  std::unique_ptr<SqlMetadataStore> OpenStore() {
    auto store = SqlMetadataStore::Open(location_);
    EXPECT_TRUE(store.ok()) << store.status();
    return store.ok() ? *std::move(store) : nullptr;
  }

  std::string location_;
};

TreeEntry File(const std::string& path, const std::string& content) {
  return {path, static_cast<int64_t>(content.size()), std::string(64 - std::min<size_t>(64, content.size()), '0') + content};
}

TEST_P(MetadataBackendTest, RepositoriesPagingAndDelete) {
  auto store = OpenStore();
  for (const char* name : {"alpha", "Beta", "beta", "gamma"}) ASSERT_TRUE(store->CreateRepository("acme", name, 1, false).ok());
  EXPECT_EQ(store->CreateRepository("acme", "beta", 1, false).status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_TRUE(store->CreateRepository("acme", "beta", 2, true).ok());
  // Byte order on both backends ("B" < "a"), whatever the PostgreSQL server's locale.
  auto first = store->ListRepositories("", 0, 2, "");
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_EQ(first->size(), 2u);
  EXPECT_EQ((*first)[0].name, "Beta");
  EXPECT_EQ((*first)[1].name, "alpha");
  auto second = store->ListRepositories("", 0, 2, "acme/alpha");
  ASSERT_EQ(second->size(), 2u);
  EXPECT_EQ(second->back().name, "gamma");
  EXPECT_EQ(store->ListRepositories("amm", 0, 10, "")->size(), 1u);
  EXPECT_EQ(store->ListRepositories("", 2, 10, "")->size(), 0u);
  ASSERT_TRUE(store->DeleteRepository("acme", "gamma").ok());
  EXPECT_EQ(store->GetRepository("acme", "gamma").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store->ListRefs("acme", "gamma").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store->GetCommit("acme", "gamma", "0123").status().code(), absl::StatusCode::kNotFound);
}

TEST_P(MetadataBackendTest, CommitsTagsAndTrees) {
  auto store = OpenStore();
  ASSERT_TRUE(store->CreateRepository("acme", "tiny", 1, false).ok());
  auto first = store->CommitToBranch("acme", "tiny", "main", std::string(), "alice", "one", absl::FromUnixSeconds(1700000000),
                                     {File("b.txt", "2"), File("a.txt", "1")});
  ASSERT_TRUE(first.ok()) << first.status();
  auto tree = store->GetTree(first->tree_id);
  ASSERT_EQ(tree->size(), 2u);
  EXPECT_EQ((*tree)[0].path, "a.txt");
  EXPECT_EQ(store->GetRepository("acme", "tiny")->head_commit, first->commit_id);
  EXPECT_EQ(store->CommitToBranch("acme", "tiny", "main", std::string(), "bob", "again", absl::Now(), {}).status().code(),
            absl::StatusCode::kAborted);
  ASSERT_TRUE(store->CreateTag("acme", "tiny", "v1", first->commit_id).ok());
  EXPECT_EQ(store->CreateTag("acme", "tiny", "main", first->commit_id).code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(store->CommitToBranch("acme", "tiny", "v1", std::nullopt, "bob", "onto a tag", absl::Now(), {}).status().code(),
            absl::StatusCode::kFailedPrecondition);
  auto refs = store->ListRefs("acme", "tiny");
  ASSERT_EQ(refs->size(), 2u);
  EXPECT_EQ((*refs)[0].name, "main");
  EXPECT_TRUE((*refs)[1].is_tag);
  EXPECT_EQ(store->FindCommitsByPrefix("acme", "tiny", first->commit_id.substr(0, 6))->size(), 1u);
  EXPECT_TRUE(store->DeleteTag("acme", "tiny", "v1").ok());
  EXPECT_EQ(store->DeleteTag("acme", "tiny", "v1").code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(*store->LogicalBytes(), 2);
  EXPECT_EQ(store->ReferencedBlobs()->size(), 2u);

  // Same tree in a second repository: stored once, still there after the first repository goes.
  ASSERT_TRUE(store->CreateRepository("acme", "copy", 1, false).ok());
  auto copy = store->CommitToBranch("acme", "copy", "main", std::nullopt, "carol", "copy", absl::Now(),
                                    {File("a.txt", "1"), File("b.txt", "2")});
  ASSERT_TRUE(copy.ok()) << copy.status();
  EXPECT_EQ(copy->tree_id, first->tree_id);
  ASSERT_TRUE(store->DeleteRepository("acme", "tiny").ok());
  ASSERT_TRUE(store->DeleteOrphanTrees().ok());
  EXPECT_EQ(store->GetTree(first->tree_id)->size(), 2u);
  ASSERT_TRUE(store->DeleteRepository("acme", "copy").ok());
  ASSERT_TRUE(store->DeleteOrphanTrees().ok());
  EXPECT_TRUE(store->GetTree(first->tree_id)->empty());
  EXPECT_TRUE(store->ReferencedBlobs()->empty());
}

// Two stores (two replicas) commit to one branch from 2 x 6 threads with no parent check: every
// commit lands and the history is one chain with each commit's own tree.
// Note [Same-size candidates] (registry_service.cc): committed files of one exact size, the most
// recently committed first, each sha256 once.
TEST_P(MetadataBackendTest, BlobsOfSizeNewestFirst) {
  auto store = OpenStore();
  ASSERT_TRUE(store->CreateRepository("acme", "sizes", 1, false).ok());
  const absl::Time start = absl::Now();
  ASSERT_TRUE(store->CommitToBranch("acme", "sizes", "main", std::nullopt, "bob", "one", start,
                                    {File("a.bin", "aaaa"), File("b.bin", "bbbb"), File("c.bin", "cc")}).ok());
  ASSERT_TRUE(store->CommitToBranch("acme", "sizes", "main", std::nullopt, "bob", "two", start + absl::Seconds(5),
                                    {File("a.bin", "aaaa"), File("d.bin", "dddd")}).ok());
  auto four = store->BlobsOfSize(4, 10);
  ASSERT_TRUE(four.ok()) << four.status();
  ASSERT_EQ(four->size(), 3u);
  // "dddd" and "aaaa" are in the newer commit; "bbbb" only in the older one.
  EXPECT_EQ(four->back(), File("b.bin", "bbbb").sha256);
  EXPECT_EQ(store->BlobsOfSize(4, 1)->size(), 1u);
  EXPECT_EQ(*store->BlobsOfSize(2, 10), std::vector<std::string>{File("c.bin", "cc").sha256});
  EXPECT_TRUE(store->BlobsOfSize(3, 10)->empty());
}

TEST_P(MetadataBackendTest, RacingCommitsFromTwoReplicasAllLand) {
  auto replica_a = OpenStore();
  auto replica_b = OpenStore();
  ASSERT_TRUE(replica_a->CreateRepository("acme", "race", 1, false).ok());
  constexpr int kThreads = 12;
  std::vector<absl::StatusOr<CommitRecord>> results(kThreads, absl::UnknownError("not run"));
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&, i] {
      SqlMetadataStore& store = i % 2 ? *replica_a : *replica_b;
      results[i] = store.CommitToBranch("acme", "race", "main", std::nullopt, "racer", absl::StrCat("commit ", i),
                                        absl::Now(), {File("weights.bin", std::to_string(i)), File(absl::StrCat("only-", i), "x")});
    });
  }
  for (auto& thread : threads) thread.join();
  std::map<std::string, int> writer;
  for (int i = 0; i < kThreads; ++i) {
    ASSERT_TRUE(results[i].ok()) << results[i].status();
    writer[results[i]->commit_id] = i;
  }
  ASSERT_EQ(writer.size(), static_cast<size_t>(kThreads));
  std::string cursor = replica_b->GetRepository("acme", "race")->head_commit;
  int chain = 0;
  while (!cursor.empty()) {
    auto commit = replica_a->GetCommit("acme", "race", cursor);
    ASSERT_TRUE(commit.ok()) << commit.status();
    ASSERT_TRUE(writer.count(cursor));
    auto tree = replica_b->GetTree(commit->tree_id);
    ASSERT_EQ(tree->size(), 2u);  // its own files, never another commit's
    EXPECT_EQ((*tree)[0].path, absl::StrCat("only-", writer[cursor]));
    ++chain;
    cursor = commit->parent_ids.empty() ? "" : commit->parent_ids.front();
  }
  EXPECT_EQ(chain, kThreads);
}

// With an expected parent, exactly one of the racers on the two replicas wins.
TEST_P(MetadataBackendTest, ExpectedParentRaceHasOneWinner) {
  auto replica_a = OpenStore();
  auto replica_b = OpenStore();
  ASSERT_TRUE(replica_a->CreateRepository("acme", "race", 1, false).ok());
  constexpr int kThreads = 8;
  std::vector<absl::StatusOr<CommitRecord>> results(kThreads, absl::UnknownError("not run"));
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&, i] {
      SqlMetadataStore& store = i % 2 ? *replica_a : *replica_b;
      results[i] = store.CommitToBranch("acme", "race", "main", std::string(), "racer", "first", absl::Now(),
                                        {File("f", std::to_string(i))});
    });
  }
  for (auto& thread : threads) thread.join();
  int winners = 0;
  for (auto& result : results) {
    if (result.ok()) {
      ++winners;
    } else {
      EXPECT_EQ(result.status().code(), absl::StatusCode::kAborted) << result.status();
    }
  }
  EXPECT_EQ(winners, 1);
}

// Garbage collection on one replica (WithCommitsPaused) and a commit on another: the commit's blob
// check runs only once the collection is over, never in the middle of it.
TEST_P(MetadataBackendTest, CommitsWaitForCollectionOnAnotherReplica) {
  if (GetParam() == "sqlite") GTEST_SKIP() << "one process owns a SQLite file; the Registry's own lock covers it";
  auto collector = OpenStore();
  auto committer = OpenStore();
  ASSERT_TRUE(collector->CreateRepository("acme", "gc", 1, false).ok());
  std::atomic<bool> collecting{false};
  std::atomic<bool> started{false};
  std::atomic<bool> verified_during_collection{false};
  std::thread collection([&] {
    EXPECT_TRUE(collector
                    ->WithCommitsPaused([&] {
                      collecting = true;
                      started = true;
                      std::this_thread::sleep_for(std::chrono::milliseconds(300));
                      collecting = false;
                      return absl::OkStatus();
                    })
                    .ok());
  });
  while (!started) std::this_thread::yield();
  auto commit = committer->CommitToBranch("acme", "gc", "main", std::nullopt, "alice", "during gc", absl::Now(),
                                          {File("weights.bin", "1")}, [&] {
                                            if (collecting) verified_during_collection = true;
                                            return absl::OkStatus();
                                          });
  collection.join();
  ASSERT_TRUE(commit.ok()) << commit.status();
  EXPECT_FALSE(verified_during_collection);
  // A failing check aborts the commit and leaves the branch where it was.
  auto refused = committer->CommitToBranch("acme", "gc", "main", std::nullopt, "alice", "missing blob", absl::Now(),
                                           {File("other.bin", "2")},
                                           [] { return absl::FailedPreconditionError("blob is not in the registry"); });
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(collector->GetRepository("acme", "gc")->head_commit, commit->commit_id);
}

TEST(MetadataBackendOpenTest, UnreachablePostgresIsUnavailableAndHidesThePassword) {
  auto store = SqlMetadataStore::Open("postgresql://registry:s3cret@127.0.0.1:1/flotilla?connect_timeout=2");
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_FALSE(absl::StrContains(store.status().message(), "s3cret")) << store.status();
  EXPECT_TRUE(absl::StrContains(store.status().message(), "registry:***@127.0.0.1")) << store.status();
}

INSTANTIATE_TEST_SUITE_P(Backends, MetadataBackendTest, testing::Values("sqlite", "postgres"),
                         [](const testing::TestParamInfo<std::string>& info) { return info.param; });

}  // namespace
}  // namespace flotilla::registry
