#include "services/worker/scheduler.h"

#include <gtest/gtest.h>

#include <map>
#include <numeric>

namespace flotilla::worker {
namespace {

constexpr int kBlockSize = 4;
constexpr int32_t kEos = 2;

std::shared_ptr<Sequence> MakeSequence(const std::string& request_id, int num_prompt_tokens,
                                       int max_tokens = 3, int priority = 0,
                                       int32_t first_token = 100) {
  auto sequence = std::make_shared<Sequence>();
  sequence->request_id = request_id;
  sequence->prompt_token_ids.resize(num_prompt_tokens);
  std::iota(sequence->prompt_token_ids.begin(), sequence->prompt_token_ids.end(), first_token);
  sequence->max_tokens = max_tokens;
  sequence->priority = priority;
  sequence->eos_token_ids = {kEos};
  return sequence;
}

// The "model": every sampled token is 1000 + the position it is sampled at, so a sequence's
// outputs show whether its positions were right, whatever the batch or preemption.
std::vector<SampledToken> FakeSample(const SchedulerOutput& step) {
  std::vector<SampledToken> sampled;
  for (const ScheduledSequence& scheduled : step.sequences) {
    if (!scheduled.samples) continue;
    sampled.push_back({.token_id = 1000 + scheduled.num_computed_tokens + scheduled.num_tokens});
  }
  return sampled;
}

std::map<std::string, int> TokensPerRequest(const SchedulerOutput& step) {
  std::map<std::string, int> tokens;
  for (const ScheduledSequence& scheduled : step.sequences) {
    tokens[scheduled.sequence->request_id] = scheduled.num_tokens;
  }
  return tokens;
}

struct Harness {
  explicit Harness(SchedulerOptions options, int num_blocks = 64, bool prefix_caching = false)
      : blocks(num_blocks, kBlockSize, prefix_caching), scheduler(options, blocks) {}

  // One engine step with the fake model.
  std::vector<SequenceUpdate> Step(SchedulerOutput* out = nullptr) {
    SchedulerOutput step = scheduler.Schedule();
    std::vector<SequenceUpdate> updates = scheduler.Update(step, FakeSample(step));
    if (out != nullptr) *out = step;
    return updates;
  }
  void RunToCompletion() {
    for (int steps = 0; scheduler.HasWork(); ++steps) {
      ASSERT_LT(steps, 1000) << "no progress";
      Step();
    }
  }

  BlockManager blocks;
  Scheduler scheduler;
};

SchedulerOptions Options(int max_num_batched_tokens, int max_num_seqs = 64,
                         int max_model_len = 64) {
  return {.max_num_batched_tokens = max_num_batched_tokens,
          .max_num_seqs = max_num_seqs,
          .max_model_len = max_model_len};
}

TEST(SchedulerTest, PrefillThenDecodesToMaxTokens) {
  Harness harness(Options(100));
  auto sequence = MakeSequence("a", 5, /*max_tokens=*/3);
  harness.scheduler.Add(sequence);
  SchedulerOutput step;
  auto updates = harness.Step(&step);
  ASSERT_EQ(step.sequences.size(), 1u);
  EXPECT_EQ(step.sequences[0].num_computed_tokens, 0);
  EXPECT_EQ(step.sequences[0].num_tokens, 5);
  EXPECT_TRUE(step.sequences[0].samples);
  ASSERT_EQ(updates.size(), 1u);
  EXPECT_EQ(updates[0].token.token_id, 1005);
  EXPECT_FALSE(updates[0].finished);

  updates = harness.Step(&step);
  EXPECT_EQ(step.sequences[0].num_computed_tokens, 5);
  EXPECT_EQ(step.sequences[0].num_tokens, 1);  // a decode
  updates = harness.Step();
  ASSERT_EQ(updates.size(), 1u);
  EXPECT_TRUE(updates[0].finished);
  EXPECT_EQ(updates[0].finish_reason, "length");
  EXPECT_EQ(sequence->output_token_ids, (std::vector<int32_t>{1005, 1006, 1007}));
  EXPECT_FALSE(harness.scheduler.HasWork());
  EXPECT_EQ(harness.blocks.num_used_blocks(), 0);
}

TEST(SchedulerTest, ChunkedPrefillAcrossSteps) {
  Harness harness(Options(/*max_num_batched_tokens=*/8));
  auto sequence = MakeSequence("a", 20, /*max_tokens=*/2);
  harness.scheduler.Add(sequence);
  SchedulerOutput step;
  for (int chunk = 0; chunk < 2; ++chunk) {
    EXPECT_TRUE(harness.Step(&step).empty());
    EXPECT_EQ(step.sequences[0].num_computed_tokens, chunk * 8);
    EXPECT_EQ(step.sequences[0].num_tokens, 8);
    EXPECT_FALSE(step.sequences[0].samples);
  }
  auto updates = harness.Step(&step);
  EXPECT_EQ(step.sequences[0].num_tokens, 4);
  EXPECT_TRUE(step.sequences[0].samples);
  ASSERT_EQ(updates.size(), 1u);
  EXPECT_EQ(updates[0].token.token_id, 1020);
  EXPECT_EQ(sequence->num_computed_tokens, 20);
}

TEST(SchedulerTest, TokenBudgetIsSharedRunningFirst) {
  Harness harness(Options(/*max_num_batched_tokens=*/10));
  harness.scheduler.Add(MakeSequence("a", 6, 10));
  harness.scheduler.Add(MakeSequence("b", 6, 10));
  SchedulerOutput step;
  harness.Step(&step);
  EXPECT_EQ(TokensPerRequest(step), (std::map<std::string, int>{{"a", 6}, {"b", 4}}));
  EXPECT_EQ(step.num_batched_tokens, 10);
  harness.Step(&step);
  // a decodes (1 token), b finishes its prompt (2 tokens).
  EXPECT_EQ(TokensPerRequest(step), (std::map<std::string, int>{{"a", 1}, {"b", 2}}));
  EXPECT_EQ(step.num_sampling_sequences(), 2);
}

TEST(SchedulerTest, SequenceCapLimitsRunning) {
  Harness harness(Options(100, /*max_num_seqs=*/2));
  for (const char* id : {"a", "b", "c"}) harness.scheduler.Add(MakeSequence(id, 4, 2));
  SchedulerOutput step;
  harness.Step(&step);
  EXPECT_EQ(TokensPerRequest(step), (std::map<std::string, int>{{"a", 4}, {"b", 4}}));
  EXPECT_EQ(harness.scheduler.num_running(), 2);
  EXPECT_EQ(harness.scheduler.num_waiting(), 1);
  harness.Step(&step);  // a and b finish (max_tokens 2)
  EXPECT_EQ(harness.scheduler.num_running(), 0);
  harness.Step(&step);
  EXPECT_EQ(TokensPerRequest(step), (std::map<std::string, int>{{"c", 4}}));
}

TEST(SchedulerTest, FirstComeFirstServed) {
  Harness harness(Options(/*max_num_batched_tokens=*/4));
  harness.scheduler.Add(MakeSequence("a", 4, 1));
  harness.scheduler.Add(MakeSequence("b", 4, 1));
  SchedulerOutput step;
  harness.Step(&step);
  EXPECT_EQ(TokensPerRequest(step), (std::map<std::string, int>{{"a", 4}}));
  harness.Step(&step);
  EXPECT_EQ(TokensPerRequest(step), (std::map<std::string, int>{{"b", 4}}));
}

TEST(SchedulerTest, LowerPriorityValueIsServedFirst) {
  Harness harness(Options(/*max_num_batched_tokens=*/4));
  harness.scheduler.Add(MakeSequence("late-but-urgent", 4, 1, /*priority=*/0));
  harness.scheduler.Add(MakeSequence("background", 4, 1, /*priority=*/5));
  harness.scheduler.Add(MakeSequence("urgent", 4, 1, /*priority=*/-1));
  std::vector<std::string> order;
  for (int i = 0; i < 3; ++i) {
    SchedulerOutput step;
    harness.Step(&step);
    ASSERT_EQ(step.sequences.size(), 1u);
    order.push_back(step.sequences[0].sequence->request_id);
  }
  EXPECT_EQ(order, (std::vector<std::string>{"urgent", "late-but-urgent", "background"}));
}

TEST(SchedulerTest, AdmissionWaitsForBlocks) {
  // 4 blocks of 4 tokens: a takes 3 (10 prompt tokens, and room to grow), b needs 2.
  Harness harness(Options(100, 64, /*max_model_len=*/16), /*num_blocks=*/4);
  auto first = MakeSequence("a", 10, /*max_tokens=*/2);
  auto second = MakeSequence("b", 6, /*max_tokens=*/1);
  harness.scheduler.Add(first);
  harness.scheduler.Add(second);
  SchedulerOutput step;
  harness.Step(&step);
  EXPECT_EQ(TokensPerRequest(step), (std::map<std::string, int>{{"a", 10}}));
  EXPECT_EQ(harness.scheduler.num_waiting(), 1);
  harness.Step(&step);  // a decodes and finishes, freeing its blocks
  EXPECT_EQ(TokensPerRequest(step), (std::map<std::string, int>{{"a", 1}}));
  EXPECT_TRUE(first->is_finished());
  harness.Step(&step);
  EXPECT_EQ(TokensPerRequest(step), (std::map<std::string, int>{{"b", 6}}));
}

TEST(SchedulerTest, PreemptsLatestByRecomputeAndItFinishesWithTheRightTokens) {
  // 4 blocks: a (7 tokens, 2 blocks) and b (5 tokens, 2 blocks) fill the cache; when a needs a
  // third block, b (the latest) is preempted, and later recomputes prompt + its output.
  Harness harness(Options(100, 64, /*max_model_len=*/16), /*num_blocks=*/4);
  auto first = MakeSequence("a", 7, /*max_tokens=*/3, 0, /*first_token=*/100);
  auto second = MakeSequence("b", 5, /*max_tokens=*/4, 0, /*first_token=*/200);
  harness.scheduler.Add(first);
  harness.scheduler.Add(second);
  SchedulerOutput step;
  harness.Step(&step);  // a: 7 -> 8 tokens, b: 5 -> 6 tokens
  EXPECT_EQ(harness.blocks.num_free_blocks(), 0);
  harness.Step(&step);  // a computes token 8 (fits its 2 blocks); b computes token 6
  EXPECT_TRUE(step.preempted.empty());
  harness.Step(&step);  // a computes token 9: needs a 3rd block -> b preempted
  ASSERT_EQ(step.preempted.size(), 1u);
  EXPECT_EQ(step.preempted[0], second);
  EXPECT_EQ(TokensPerRequest(step), (std::map<std::string, int>{{"a", 1}}));
  EXPECT_EQ(second->status, SequenceStatus::kWaiting);
  EXPECT_EQ(second->num_computed_tokens, 0);
  EXPECT_TRUE(second->block_table.empty());
  EXPECT_EQ(second->num_preemptions, 1);
  EXPECT_EQ(harness.scheduler.num_preemptions_total(), 1);
  EXPECT_TRUE(first->is_finished());
  EXPECT_EQ(second->output_token_ids, (std::vector<int32_t>{1005, 1006}));

  harness.Step(&step);  // b readmitted: recomputes its 5 prompt + 2 output tokens, samples
  EXPECT_EQ(TokensPerRequest(step), (std::map<std::string, int>{{"b", 7}}));
  EXPECT_TRUE(step.sequences[0].samples);
  harness.RunToCompletion();
  EXPECT_EQ(first->output_token_ids, (std::vector<int32_t>{1007, 1008, 1009}));
  EXPECT_EQ(second->output_token_ids, (std::vector<int32_t>{1005, 1006, 1007, 1008}));
  EXPECT_EQ(second->finish_reason, "length");
  EXPECT_EQ(harness.blocks.num_used_blocks(), 0);
}

TEST(SchedulerTest, PreemptsTheLowestPriorityNotTheLatest) {
  Harness harness(Options(100, 64, /*max_model_len=*/16), /*num_blocks=*/4);
  auto background = MakeSequence("background", 5, 4, /*priority=*/1);
  auto urgent = MakeSequence("urgent", 7, 3, /*priority=*/0);
  harness.scheduler.Add(background);
  harness.scheduler.Add(urgent);
  SchedulerOutput step;
  harness.Step(&step);  // both admitted (urgent first): 2 + 2 blocks
  harness.Step(&step);
  harness.Step(&step);  // urgent needs a 3rd block: background goes, though it arrived first
  ASSERT_EQ(step.preempted.size(), 1u);
  EXPECT_EQ(step.preempted[0], background);
  harness.RunToCompletion();
  EXPECT_EQ(background->output_token_ids, (std::vector<int32_t>{1005, 1006, 1007, 1008}));
  EXPECT_EQ(background->finish_reason, "length");
}

TEST(SchedulerTest, ALowerPriorityVictimPreemptsItself) {
  // a (priority 0) has room to grow in its blocks; b (priority 1) fills its two blocks and
  // needs a third: the victim is b itself, so b yields and a keeps running.
  Harness harness(Options(100, 64, /*max_model_len=*/16), /*num_blocks=*/4);
  auto first = MakeSequence("a", 5, /*max_tokens=*/3, /*priority=*/0);
  auto second = MakeSequence("b", 8, /*max_tokens=*/2, /*priority=*/1);
  harness.scheduler.Add(first);
  harness.scheduler.Add(second);
  harness.Step();
  SchedulerOutput step;
  harness.Step(&step);
  ASSERT_EQ(step.preempted.size(), 1u);
  EXPECT_EQ(step.preempted[0], second);
  EXPECT_EQ(TokensPerRequest(step), (std::map<std::string, int>{{"a", 1}}));
  harness.RunToCompletion();
  EXPECT_EQ(first->output_token_ids, (std::vector<int32_t>{1005, 1006, 1007}));
  EXPECT_EQ(second->output_token_ids, (std::vector<int32_t>{1008, 1009}));
}

TEST(SchedulerTest, WithoutChunkedPrefillAPromptWaitsForTheWholeBudget) {
  SchedulerOptions options = Options(/*max_num_batched_tokens=*/16, 64, /*max_model_len=*/16);
  options.enable_chunked_prefill = false;
  Harness harness(options);
  harness.scheduler.Add(MakeSequence("a", 10, 2));
  harness.scheduler.Add(MakeSequence("b", 10, 2));
  SchedulerOutput step;
  harness.Step(&step);
  EXPECT_EQ(TokensPerRequest(step), (std::map<std::string, int>{{"a", 10}}));
  harness.Step(&step);
  EXPECT_EQ(TokensPerRequest(step), (std::map<std::string, int>{{"a", 1}, {"b", 10}}));
}

TEST(SchedulerTest, NoAdmissionInAStepThatPreempted) {
  Harness harness(Options(100, 64, /*max_model_len=*/16), /*num_blocks=*/4);
  auto first = MakeSequence("a", 7, 3);
  auto second = MakeSequence("b", 5, 4);
  harness.scheduler.Add(first);
  harness.scheduler.Add(second);
  harness.Step();
  harness.Step();
  harness.scheduler.Add(MakeSequence("c", 1, 1));
  SchedulerOutput step;
  harness.Step(&step);
  ASSERT_EQ(step.preempted.size(), 1u);
  EXPECT_EQ(TokensPerRequest(step), (std::map<std::string, int>{{"a", 1}}));
  // The preempted sequence is at the front of the waiting queue, before the newer c.
  ASSERT_EQ(harness.scheduler.waiting().size(), 2u);
  EXPECT_EQ(harness.scheduler.waiting()[0], second);
}

TEST(SchedulerTest, AbortFreesBlocks) {
  Harness harness(Options(100));
  auto running = MakeSequence("running", 9, 10);
  auto waiting = MakeSequence("waiting", 4, 10);
  harness.scheduler.Add(running);
  harness.Step();
  harness.scheduler.Add(waiting);
  EXPECT_GT(harness.blocks.num_used_blocks(), 0);
  EXPECT_TRUE(harness.scheduler.Abort("running"));
  EXPECT_TRUE(harness.scheduler.Abort("waiting"));
  EXPECT_FALSE(harness.scheduler.Abort("unknown"));
  EXPECT_EQ(running->finish_reason, "abort");
  EXPECT_TRUE(waiting->is_finished());
  EXPECT_EQ(harness.blocks.num_used_blocks(), 0);
  EXPECT_FALSE(harness.scheduler.HasWork());
}

TEST(SchedulerTest, AbortBetweenScheduleAndUpdateDropsTheStep) {
  Harness harness(Options(100));
  auto sequence = MakeSequence("a", 4, 10);
  harness.scheduler.Add(sequence);
  SchedulerOutput step = harness.scheduler.Schedule();
  EXPECT_TRUE(harness.scheduler.Abort("a"));
  EXPECT_TRUE(harness.scheduler.Update(step, FakeSample(step)).empty());
  EXPECT_TRUE(sequence->output_token_ids.empty());
}

TEST(SchedulerTest, EosStopsAndFreesBlocks) {
  Harness harness(Options(100));
  auto sequence = MakeSequence("a", 4, 10);
  harness.scheduler.Add(sequence);
  SchedulerOutput step = harness.scheduler.Schedule();
  auto updates = harness.scheduler.Update(step, {{.token_id = kEos}});
  ASSERT_EQ(updates.size(), 1u);
  EXPECT_TRUE(updates[0].finished);
  EXPECT_EQ(updates[0].finish_reason, "stop");
  EXPECT_EQ(harness.blocks.num_used_blocks(), 0);
  EXPECT_FALSE(harness.scheduler.HasWork());
}

TEST(SchedulerTest, MaxModelLenFinishesWithLength) {
  Harness harness(Options(100, 64, /*max_model_len=*/8));
  auto sequence = MakeSequence("a", 6, /*max_tokens=*/100);
  harness.scheduler.Add(sequence);
  harness.RunToCompletion();
  EXPECT_EQ(sequence->num_tokens(), 8);
  EXPECT_EQ(sequence->finish_reason, "length");
}

TEST(SchedulerTest, PrefixHitSkipsCachedTokensAndSharesBlocks) {
  Harness harness(Options(100), /*num_blocks=*/16, /*prefix_caching=*/true);
  auto first = MakeSequence("a", 10, /*max_tokens=*/5);
  harness.scheduler.Add(first);
  harness.Step();
  auto second = MakeSequence("b", 10, /*max_tokens=*/2);  // same prompt
  harness.scheduler.Add(second);
  SchedulerOutput step;
  harness.Step(&step);
  EXPECT_EQ(TokensPerRequest(step), (std::map<std::string, int>{{"a", 1}, {"b", 2}}));
  EXPECT_EQ(second->num_cached_prompt_tokens, 8);
  EXPECT_EQ(second->block_table[0], first->block_table[0]);
  EXPECT_EQ(second->block_table[1], first->block_table[1]);
  EXPECT_EQ(harness.blocks.reference_count(first->block_table[0]), 2);
  EXPECT_EQ(second->output_token_ids, (std::vector<int32_t>{1010}));
  EXPECT_EQ(harness.blocks.prefix_cache_hits(), 8);
}

TEST(SchedulerTest, CountersTrackQueues) {
  Harness harness(Options(/*max_num_batched_tokens=*/4));
  harness.scheduler.Add(MakeSequence("a", 6, 2));
  harness.scheduler.Add(MakeSequence("b", 3, 2));
  EXPECT_EQ(harness.scheduler.num_waiting(), 2);
  EXPECT_EQ(harness.scheduler.num_uncomputed_tokens(), 9);
  harness.Step();
  EXPECT_EQ(harness.scheduler.num_running(), 1);
  EXPECT_EQ(harness.scheduler.num_waiting(), 1);
  EXPECT_EQ(harness.scheduler.num_uncomputed_tokens(), 5);
}

}  // namespace
}  // namespace flotilla::worker
