#include "services/common/logging.h"

#include <gtest/gtest.h>

namespace flotilla {
namespace {

TEST(FormatLogLineTest, IsOneJsonObjectWithServiceLevelMessageAndFields) {
  SetLogServiceName("registry");
  const std::string line = FormatLogLine(LogLevel::kWarning, "push refused", {{"repository", "acme/llama"}, {"bytes", 12}});
  const nlohmann::json parsed = nlohmann::json::parse(line);
  EXPECT_EQ(parsed["service"], "registry");
  EXPECT_EQ(parsed["level"], "warning");
  EXPECT_EQ(parsed["message"], "push refused");
  EXPECT_EQ(parsed["repository"], "acme/llama");
  EXPECT_EQ(parsed["bytes"], 12);
  EXPECT_EQ(line.find('\n'), std::string::npos);
}

TEST(FormatLogLineTest, InvalidUtf8IsReplacedNotThrown) {
  const std::string line = FormatLogLine(LogLevel::kInfo, std::string("bad \xff byte"), {});
  EXPECT_NO_THROW(nlohmann::json::parse(line));
}

TEST(ParseLogLevelTest, AcceptsTheFourNamesOnly) {
  LogLevel level;
  EXPECT_TRUE(ParseLogLevel("debug", &level));
  EXPECT_EQ(level, LogLevel::kDebug);
  EXPECT_TRUE(ParseLogLevel("error", &level));
  EXPECT_EQ(level, LogLevel::kError);
  EXPECT_FALSE(ParseLogLevel("verbose", &level));
}

}  // namespace
}  // namespace flotilla
