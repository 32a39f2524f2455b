#include "services/gateway/stop_strings.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace flotilla::gateway {
namespace {

// Feeds `deltas` and returns everything emitted (flushing when no stop matched).
std::string FeedAll(StopStringMatcher& matcher, const std::vector<std::string>& deltas) {
  std::string emitted;
  for (const std::string& delta : deltas) {
    StopStringMatcher::Result result = matcher.Feed(delta);
    emitted += result.text;
    if (result.stopped) return emitted;
  }
  return emitted + matcher.Flush();
}

TEST(StopStringMatcherTest, NoStopStringsPassesEverythingThrough) {
  StopStringMatcher matcher({});
  StopStringMatcher::Result result = matcher.Feed("Hello");
  EXPECT_EQ(result.text, "Hello");
  EXPECT_FALSE(result.stopped);
  EXPECT_EQ(matcher.Flush(), "");
}

TEST(StopStringMatcherTest, StopInsideOneDeltaCutsItAndWhatFollows) {
  StopStringMatcher matcher({"END"});
  StopStringMatcher::Result result = matcher.Feed("abc END def");
  EXPECT_EQ(result.text, "abc ");
  EXPECT_TRUE(result.stopped);
  EXPECT_TRUE(matcher.stopped());
  EXPECT_EQ(matcher.matched_stop_string(), "END");
  EXPECT_EQ(matcher.Feed("more").text, "");
}

TEST(StopStringMatcherTest, StopSplitAcrossDeltasIsHeldBackThenCut) {
  StopStringMatcher matcher({"\n\nUser:"});
  StopStringMatcher::Result first = matcher.Feed("The answer is 4.\n");
  EXPECT_EQ(first.text, "The answer is 4.");
  EXPECT_FALSE(first.stopped);
  EXPECT_EQ(matcher.held_back_size(), 1u);
  StopStringMatcher::Result second = matcher.Feed("\nUs");
  EXPECT_EQ(second.text, "");
  StopStringMatcher::Result third = matcher.Feed("er: hi");
  EXPECT_EQ(third.text, "");
  EXPECT_TRUE(third.stopped);
}

TEST(StopStringMatcherTest, PartialPrefixThatIsNotAStopIsReleased) {
  StopStringMatcher matcher({"STOP"});
  EXPECT_EQ(matcher.Feed("a ST").text, "a ");
  EXPECT_EQ(matcher.Feed("OR").text, "STOR");
  EXPECT_EQ(matcher.Feed("y ST").text, "y ");
  EXPECT_EQ(matcher.Flush(), "ST");  // ended without a stop: the held-back tail is text
  EXPECT_FALSE(matcher.stopped());
}

TEST(StopStringMatcherTest, EarliestOfSeveralStopsWins) {
  StopStringMatcher matcher({"world", "lo w", "xyz"});
  StopStringMatcher::Result result = matcher.Feed("hello world");
  EXPECT_EQ(result.text, "hel");
  EXPECT_EQ(matcher.matched_stop_string(), "lo w");
}

TEST(StopStringMatcherTest, LongerStopWinsATie) {
  StopStringMatcher matcher({"ab", "abc"});
  EXPECT_EQ(matcher.Feed("xxabcd").text, "xx");
  EXPECT_EQ(matcher.matched_stop_string(), "abc");
}

TEST(StopStringMatcherTest, HoldsBackForEveryStopString) {
  StopStringMatcher matcher({"###", "Observation:"});
  EXPECT_EQ(matcher.Feed("x Obs").text, "x ");
  EXPECT_EQ(matcher.Feed("erv").text, "");
  EXPECT_EQ(matcher.Feed("ed #").text, "Observed ");
  EXPECT_EQ(matcher.Feed("##").text, "");
  EXPECT_TRUE(matcher.stopped());
  EXPECT_EQ(matcher.matched_stop_string(), "###");
}

TEST(StopStringMatcherTest, IncludeStopStringKeepsItButNotWhatFollows) {
  StopStringMatcher matcher({"</answer>"}, /*include_stop_string_in_output=*/true);
  EXPECT_EQ(FeedAll(matcher, {"<answer>4</ans", "wer> trailing"}), "<answer>4</answer>");
}

TEST(StopStringMatcherTest, UnicodeStopSplitAtCharacters) {
  // "。" is 3 bytes, "停止" 6; deltas are whole characters, as the incremental decoder emits them.
  StopStringMatcher matcher({"停止。"});
  std::string emitted;
  for (const char* delta : {"答え", "は", "停", "止", "。", "以上"}) {
    StopStringMatcher::Result result = matcher.Feed(delta);
    emitted += result.text;
    if (result.stopped) break;
  }
  EXPECT_EQ(emitted, "答えは");
  EXPECT_TRUE(matcher.stopped());
}

TEST(StopStringMatcherTest, UnicodeHeldBackTailIsWholeCharacters) {
  StopStringMatcher matcher({"éX"});
  StopStringMatcher::Result result = matcher.Feed("café");
  EXPECT_EQ(result.text, "caf");
  EXPECT_EQ(matcher.Feed("Y").text, "éY");
}

TEST(StopStringMatcherTest, EverySplitGivesTheSameText) {
  const std::string text = "one STOP two";
  for (size_t cut = 0; cut <= text.size(); ++cut) {
    StopStringMatcher matcher({"STOP", "TOPS"});
    EXPECT_EQ(FeedAll(matcher, {text.substr(0, cut), text.substr(cut)}), "one ") << "cut at " << cut;
  }
}

TEST(StopStringMatcherTest, EmptyStopStringsAreIgnored) {
  StopStringMatcher matcher({""});
  EXPECT_EQ(matcher.Feed("abc").text, "abc");
  EXPECT_FALSE(matcher.stopped());
}

}  // namespace
}  // namespace flotilla::gateway
