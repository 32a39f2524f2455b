#include "services/common/server.h"

#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>

namespace flotilla {
namespace {

TEST(SplitHostPortTest, AcceptsHostPortAndBracketedIpv6) {
  auto address = SplitHostPort("127.0.0.1:50051");
  ASSERT_TRUE(address.ok());
  EXPECT_EQ(address->first, "127.0.0.1");
  EXPECT_EQ(address->second, 50051);
  auto ipv6 = SplitHostPort("[::1]:0");
  ASSERT_TRUE(ipv6.ok());
  EXPECT_EQ(ipv6->first, "::1");
  EXPECT_EQ(ipv6->second, 0);
}

TEST(SplitHostPortTest, RejectsMissingOrBadPortWithTheValueInTheMessage) {
  for (const std::string bad : {"localhost", "127.0.0.1:", "127.0.0.1:70000", ":80", "[::1]80"}) {
    auto address = SplitHostPort(bad);
    ASSERT_FALSE(address.ok()) << bad;
    EXPECT_NE(address.status().message().find(bad), std::string::npos) << address.status();
  }
}

TEST(PrepareDataDirectoryTest, CreatesMissingDirectories) {
  const auto root = std::filesystem::path(testing::TempDir()) / "prepare_creates";
  std::filesystem::remove_all(root);
  EXPECT_TRUE(PrepareDataDirectory((root / "a" / "b").string()).ok());
  EXPECT_TRUE(std::filesystem::is_directory(root / "a" / "b"));
}

TEST(PrepareDataDirectoryTest, RejectsARegularFile) {
  const auto file = std::filesystem::path(testing::TempDir()) / "prepare_file";
  std::ofstream(file) << "x";
  const absl::Status status = PrepareDataDirectory(file.string());
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(status.message().find("not a directory"), std::string::npos);
}

}  // namespace
}  // namespace flotilla
