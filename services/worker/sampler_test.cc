#include "services/worker/sampler.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <map>
#include <set>

namespace flotilla::worker {
namespace {

Sequence MakeSequence(SamplingOptions sampling = {}) {
  Sequence sequence;
  sequence.request_id = "request";
  sequence.prompt_token_ids = {0};
  sequence.max_tokens = 100;
  sequence.sampling = std::move(sampling);
  return sequence;
}

at::Tensor Row(std::vector<float> values) {
  return at::tensor(values, at::TensorOptions().dtype(at::kFloat)).unsqueeze(0);
}

int32_t SampleOne(const at::Tensor& logits, const Sequence& sequence) {
  return Sampler().Sample(logits, {&sequence})[0].token_id;
}

TEST(SamplerTest, GreedyIsArgmaxWithTiesToTheLowestId) {
  Sequence sequence = MakeSequence();
  EXPECT_EQ(SampleOne(Row({0.1f, 2.0f, -1.0f, 0.5f}), sequence), 1);
  EXPECT_EQ(SampleOne(Row({0.1f, 2.0f, -1.0f, 2.0f}), sequence), 1);
}

TEST(SamplerTest, GreedyBatchPicksEachRowsArgmax) {
  Sequence sequence = MakeSequence();
  at::Tensor logits = at::randn({5, 50});
  std::vector<SampledToken> sampled =
      Sampler().Sample(logits, std::vector<const Sequence*>(5, &sequence));
  at::Tensor expected = logits.argmax(-1);
  for (int row = 0; row < 5; ++row) EXPECT_EQ(sampled[row].token_id, expected[row].item<int64_t>());
}

// The vectorised greedy scan against torch.argmax: a vocabulary that is not a multiple of 16 lanes,
// the maximum in the tail, ties (first id wins), NaN (the first NaN wins), rows of -inf.
TEST(SamplerTest, GreedyOverALargeVocabularyFollowsTorchArgmax) {
  at::manual_seed(5);
  const int64_t vocab = 49157;
  at::Tensor logits = at::randn({9, vocab}).mul(2).round();  // many ties at the maximum
  logits[1][vocab - 1] = 100.0f;                              // in the tail
  logits[2][vocab - 3] = 100.0f;
  logits[2][40000] = 100.0f;                                  // tie: 40000 wins
  logits[3][777] = std::numeric_limits<float>::quiet_NaN();
  logits[3][12345] = std::numeric_limits<float>::quiet_NaN();
  logits[4][vocab - 2] = std::numeric_limits<float>::quiet_NaN();  // NaN only in the tail
  logits[5].fill_(-std::numeric_limits<float>::infinity());
  logits[6][0] = std::numeric_limits<float>::infinity();
  logits[6][17] = std::numeric_limits<float>::infinity();
  Sequence sequence = MakeSequence();
  const std::vector<SampledToken> sampled = Sampler().Sample(logits, std::vector<const Sequence*>(9, &sequence));
  const at::Tensor expected = logits.argmax(-1);
  for (int row = 0; row < 9; ++row) EXPECT_EQ(sampled[row].token_id, expected[row].item<int64_t>()) << "row " << row;
  EXPECT_EQ(sampled[2].token_id, 40000);
  EXPECT_EQ(sampled[3].token_id, 777);
}

TEST(SamplerTest, TopKOneIsGreedy) {
  Sequence sequence = MakeSequence({.temperature = 1.5f, .top_k = 1, .seed = 7});
  at::Tensor logits = at::randn({1, 100});
  for (int position = 0; position < 20; ++position) {
    sequence.output_token_ids.assign(position, 3);
    EXPECT_EQ(SampleOne(logits, sequence), logits.argmax(-1).item<int64_t>());
  }
}

// The tokens drawn at positions [0, count) of a one-token prompt (the prompt's length shifts
// the position; output tokens are placeholders for it).
std::set<int32_t> TokensDrawn(const at::Tensor& logits, Sequence sequence, int count) {
  std::set<int32_t> drawn;
  for (int position = 0; position < count; ++position) {
    sequence.output_token_ids.assign(position, 0);
    drawn.insert(SampleOne(logits, sequence));
  }
  return drawn;
}

TEST(SamplerTest, TopKKeepsTheKMostLikely) {
  // Probabilities 0.4, 0.3, 0.2, 0.1: top_k 2 leaves tokens 0 and 1.
  at::Tensor logits = Row({std::log(0.4f), std::log(0.3f), std::log(0.2f), std::log(0.1f)});
  Sequence sequence = MakeSequence({.temperature = 1.0f, .top_k = 2, .seed = 1});
  EXPECT_EQ(TokensDrawn(logits, sequence, 200), (std::set<int32_t>{0, 1}));
}

TEST(SamplerTest, TopPKeepsTheSmallestSetReachingP) {
  // 0.4 + 0.3 reaches 0.65, so token 2 (and 3) are cut.
  at::Tensor logits = Row({std::log(0.4f), std::log(0.3f), std::log(0.2f), std::log(0.1f)});
  Sequence sequence = MakeSequence({.temperature = 1.0f, .top_p = 0.65f, .seed = 1});
  EXPECT_EQ(TokensDrawn(logits, sequence, 200), (std::set<int32_t>{0, 1}));
  // A tiny top_p still keeps the most likely token.
  Sequence tiny = MakeSequence({.temperature = 1.0f, .top_p = 0.01f, .seed = 1});
  EXPECT_EQ(TokensDrawn(logits, tiny, 50), (std::set<int32_t>{0}));
}

TEST(SamplerTest, MinPDropsTokensBelowAFractionOfTheTopOne) {
  // min_p 0.6: threshold 0.24, so 0.2 and 0.1 are dropped.
  at::Tensor logits = Row({std::log(0.4f), std::log(0.3f), std::log(0.2f), std::log(0.1f)});
  Sequence sequence = MakeSequence({.temperature = 1.0f, .min_p = 0.6f, .seed = 1});
  EXPECT_EQ(TokensDrawn(logits, sequence, 200), (std::set<int32_t>{0, 1}));
}

TEST(SamplerTest, DrawFollowsTheDistribution) {
  at::Tensor logits = Row({std::log(0.7f), std::log(0.2f), std::log(0.1f)});
  Sequence sequence = MakeSequence({.temperature = 1.0f, .seed = 12345});
  std::map<int32_t, int> counts;
  constexpr int kDraws = 4000;
  for (int position = 0; position < kDraws; ++position) {
    sequence.output_token_ids.assign(position, 0);
    ++counts[SampleOne(logits, sequence)];
  }
  // Deterministic for this seed; the bounds are about 5 standard deviations wide.
  EXPECT_NEAR(counts[0] / static_cast<double>(kDraws), 0.7, 0.04);
  EXPECT_NEAR(counts[1] / static_cast<double>(kDraws), 0.2, 0.035);
  EXPECT_NEAR(counts[2] / static_cast<double>(kDraws), 0.1, 0.03);
}

TEST(SamplerTest, PenaltiesMatchAHandComputedExample) {
  // prompt {0}, outputs {1, 1, 3}; repetition 2 over {0, 1, 3}:
  //   0: 1.0 / 2 = 0.5    1: -2.0 * 2 = -4.0    3: 0.5 / 2 = 0.25
  // then frequency 0.25 and presence 0.5 over the outputs:
  //   1: -4.0 - (0.25 * 2 + 0.5) = -5.0    3: 0.25 - (0.25 * 1 + 0.5) = -0.5
  Sequence sequence = MakeSequence({.repetition_penalty = 2.0f,
                                    .presence_penalty = 0.5f,
                                    .frequency_penalty = 0.25f,
                                    .return_logprobs = true,
                                    .top_logprobs = 5});
  sequence.output_token_ids = {1, 1, 3};
  at::Tensor logits = Row({1.0f, -2.0f, 3.0f, 0.5f, 0.0f});
  SampledToken token = Sampler().Sample(logits, {&sequence})[0];
  at::Tensor expected = Row({0.5f, -5.0f, 3.0f, -0.5f, 0.0f}).log_softmax(-1)[0];
  EXPECT_EQ(token.token_id, 2);
  EXPECT_NEAR(token.logprob, expected[2].item<float>(), 1e-5);
  ASSERT_EQ(token.top_logprobs.size(), 5u);
  for (const auto& [token_id, logprob] : token.top_logprobs) {
    EXPECT_NEAR(logprob, expected[token_id].item<float>(), 1e-5) << "token " << token_id;
  }
  EXPECT_EQ(token.top_logprobs[0].first, 2);
  EXPECT_EQ(token.top_logprobs[4].first, 1);
  // The caller's logits are untouched.
  EXPECT_FLOAT_EQ(logits[0][1].item<float>(), -2.0f);
}

TEST(SamplerTest, LogitBiasIsAdded) {
  Sequence sequence = MakeSequence({.logit_bias = {{3, 10.0f}}});
  EXPECT_EQ(SampleOne(Row({1.0f, 2.0f, 3.0f, 0.0f}), sequence), 3);
  Sequence ban = MakeSequence({.logit_bias = {{2, -100.0f}}});
  EXPECT_EQ(SampleOne(Row({1.0f, 2.0f, 3.0f, 0.0f}), ban), 1);
}

TEST(SamplerTest, MinTokensMasksStopAndEosIds) {
  Sequence sequence = MakeSequence();
  sequence.eos_token_ids = {2};
  sequence.stop_token_ids = {1};
  sequence.min_tokens = 1;
  at::Tensor logits = Row({0.0f, 5.0f, 9.0f, 1.0f});
  EXPECT_EQ(SampleOne(logits, sequence), 3);
  sequence.output_token_ids = {3};  // min_tokens reached
  EXPECT_EQ(SampleOne(logits, sequence), 2);
  // ignore_eos: eos is an ordinary token, stop ids are still masked.
  Sequence ignoring = MakeSequence();
  ignoring.eos_token_ids = {2};
  ignoring.stop_token_ids = {1};
  ignoring.min_tokens = 1;
  ignoring.ignore_eos = true;
  EXPECT_EQ(SampleOne(logits, ignoring), 2);
}

// The CPU truncation (selection and partial sorts) keeps exactly the tokens the stable sort
// keeps: rows with many ties (logits on a 0.5 grid), flat rows whose nucleus is most of the
// vocabulary (the partial sort grows), peaked rows, and each of top-k / top-p / both / neither.
TEST(SamplerTest, TruncationBySelectionMatchesTheStableSort) {
  at::manual_seed(11);
  const int64_t vocab = 3000;
  at::Tensor logits = at::cat({(at::randn({6, vocab}) * 2).mul(2).round().div(2),  // ties
                               at::zeros({2, vocab}),                               // flat
                               at::randn({4, vocab}) * 8});                         // peaked
  const int64_t rows = logits.size(0);
  const std::vector<std::pair<int64_t, float>> settings = {
      {vocab, 0.9f}, {40, 2.0f}, {40, 0.5f}, {1, 0.3f}, {vocab, 0.999f}, {vocab - 1, 2.0f},
      {vocab, 0.9f}, {700, 0.95f}, {vocab, 2.0f}, {5, 0.99f}, {vocab, 0.6f}, {2999, 0.7f}};
  std::vector<int64_t> top_ks;
  std::vector<float> top_ps;
  for (int64_t row = 0; row < rows; ++row) {
    top_ks.push_back(settings[row].first);
    top_ps.push_back(settings[row].second);
  }
  const at::Tensor by_selection = TruncateTopKTopP(logits, top_ks, top_ps);
  const at::Tensor by_sort = TruncateTopKTopPBySort(logits, top_ks, top_ps);
  for (int64_t row = 0; row < rows; ++row) {
    const at::Tensor kept = by_sort[row].isfinite();
    EXPECT_TRUE(at::equal(by_selection[row].isfinite(), kept))
        << "row " << row << ": selection keeps " << by_selection[row].isfinite().sum().item<int64_t>()
        << " tokens, the sort " << kept.sum().item<int64_t>();
    EXPECT_TRUE(at::equal(by_selection[row].masked_select(kept), logits[row].masked_select(kept))) << "row " << row;
  }
  // A flat row keeps a long prefix (the partial sort grew past 64 and 256), the lowest ids.
  const int64_t flat_kept = by_selection[6].isfinite().sum().item<int64_t>();
  EXPECT_GT(flat_kept, 2000);
  EXPECT_TRUE(by_selection[6].narrow(0, 0, flat_kept).isfinite().all().item<bool>());
}

TEST(SamplerTest, SameSeedAndPositionGiveTheSameTokenWhateverTheBatch) {
  at::Tensor row = at::randn({1, 500}) * 3;
  Sequence sequence = MakeSequence({.temperature = 0.9f, .top_p = 0.95f, .seed = 2024});
  sequence.output_token_ids = {5, 6, 7};
  const int32_t alone = SampleOne(row, sequence);

  // The same row among 31 others with other logits and other options, at index 17.
  at::Tensor batch = at::randn({32, 500}) * 3;
  batch[17].copy_(row[0]);
  std::vector<Sequence> others;
  others.reserve(32);
  for (int index = 0; index < 32; ++index) {
    others.push_back(MakeSequence({.temperature = 0.5f + index * 0.05f,
                                   .top_k = index % 3 == 0 ? 10 : 0,
                                   .seed = static_cast<uint64_t>(index)}));
    if (index % 4 == 1) others.back().sampling.temperature = 0.0f;
  }
  std::vector<const Sequence*> sequences;
  for (const Sequence& other : others) sequences.push_back(&other);
  sequences[17] = &sequence;
  EXPECT_EQ(Sampler().Sample(batch, sequences)[17].token_id, alone);

  // And again later: nothing else feeds the draw.
  EXPECT_EQ(SampleOne(row, sequence), alone);
}

TEST(SamplerTest, DifferentSeedsOrPositionsDiffer) {
  at::Tensor logits = at::zeros({1, 1000});  // uniform
  Sequence first = MakeSequence({.temperature = 1.0f, .seed = 1});
  Sequence second = MakeSequence({.temperature = 1.0f, .seed = 2});
  std::set<int32_t> by_position;
  int differences = 0;
  for (int position = 0; position < 10; ++position) {
    first.output_token_ids.assign(position, 0);
    second.output_token_ids.assign(position, 0);
    const int32_t token = SampleOne(logits, first);
    by_position.insert(token);
    differences += token != SampleOne(logits, second);
  }
  EXPECT_GE(differences, 8);
  EXPECT_GE(by_position.size(), 8u);
}

TEST(SamplerTest, WithoutSeedASequenceUsesItsOwnRandomSeed) {
  at::Tensor logits = at::zeros({1, 1000});
  Sequence sequence = MakeSequence({.temperature = 1.0f});
  const int32_t token = SampleOne(logits, sequence);
  EXPECT_EQ(SampleOne(logits, sequence), token);
  Sequence same_seed = MakeSequence({.temperature = 1.0f, .seed = sequence.random_seed});
  EXPECT_EQ(SampleOne(logits, same_seed), token);
}

TEST(SamplerTest, LogprobsAreLogSoftmaxBeforeTemperature) {
  at::Tensor logits = at::randn({2, 64});
  Sequence greedy = MakeSequence({.return_logprobs = true, .top_logprobs = 3});
  Sequence warm = MakeSequence({.temperature = 0.7f, .seed = 3, .return_logprobs = true});
  std::vector<SampledToken> sampled = Sampler().Sample(logits, {&greedy, &warm});
  at::Tensor expected = logits.log_softmax(-1);
  EXPECT_NEAR(sampled[0].logprob, expected[0][sampled[0].token_id].item<float>(), 1e-5);
  EXPECT_NEAR(sampled[1].logprob, expected[1][sampled[1].token_id].item<float>(), 1e-5);
  ASSERT_EQ(sampled[0].top_logprobs.size(), 3u);
  EXPECT_EQ(sampled[0].top_logprobs[0].first, sampled[0].token_id);
  EXPECT_GE(sampled[0].top_logprobs[0].second, sampled[0].top_logprobs[1].second);
  EXPECT_TRUE(sampled[1].top_logprobs.empty());
}

TEST(SamplerTest, RejectsMismatchedShapesAndOutOfVocabularyIds) {
  Sequence sequence = MakeSequence();
  EXPECT_THROW(Sampler().Sample(at::zeros({2, 4}), {&sequence}), c10::Error);
  Sequence biased = MakeSequence({.logit_bias = {{4, 1.0f}}});
  EXPECT_THROW(Sampler().Sample(at::zeros({1, 4}), {&biased}), c10::Error);
}

}  // namespace
}  // namespace flotilla::worker
