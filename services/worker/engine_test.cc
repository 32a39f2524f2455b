// The engine end to end on a tiny random Llama: requests in, streamed tokens out, through the
// real scheduler, block manager, sampler and one packed forward per step.
#include "services/worker/engine.h"

#include <chrono>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "models/auto.h"

namespace flotilla::worker {
namespace {

constexpr int kVocab = 97;

std::shared_ptr<models::PreTrainedModel> TinyLlama() {
  const nlohmann::json config = {{"model_type", "llama"}, {"architectures", {"LlamaForCausalLM"}},
                                 {"vocab_size", kVocab}, {"hidden_size", 32}, {"intermediate_size", 48},
                                 {"num_hidden_layers", 2}, {"num_attention_heads", 4}, {"num_key_value_heads", 2},
                                 {"max_position_embeddings", 128}, {"eos_token_id", 2}, {"attn_implementation", "paged"}};
  auto model = models::ModelFromConfig(config, "config.json");
  TORCH_CHECK(model.ok(), model.status().ToString());
  torch::NoGradGuard no_grad;
  at::manual_seed(7);
  for (auto& parameter : (*model)->parameters()) parameter.normal_(0.0, 0.5);
  (*model)->SetAttentionImplementation("paged");
  return *model;
}

// Collects each request's outputs; waits for final ones.
class Outputs {
 public:
  OutputCallback For(const std::string& request_id) {
    return [this, request_id](const EngineOutput& output) {
      std::lock_guard<std::mutex> lock(mutex_);
      for (const SampledToken& token : output.tokens) tokens_[request_id].push_back(token.token_id);
      if (!output.finish_reason.empty()) {
        ++finals_[request_id];
        reasons_[request_id] = output.finish_reason;
        done_.notify_all();
      }
    };
  }
  void WaitFor(const std::vector<std::string>& request_ids) {
    std::unique_lock<std::mutex> lock(mutex_);
    ASSERT_TRUE(done_.wait_for(lock, std::chrono::seconds(60), [&] {
      for (const std::string& id : request_ids) {
        if (finals_[id] == 0) return false;
      }
      return true;
    }));
  }
  std::vector<int32_t> tokens(const std::string& id) { std::lock_guard<std::mutex> lock(mutex_); return tokens_[id]; }
  std::string reason(const std::string& id) { std::lock_guard<std::mutex> lock(mutex_); return reasons_[id]; }
  int finals(const std::string& id) { std::lock_guard<std::mutex> lock(mutex_); return finals_[id]; }

 private:
  std::mutex mutex_;
  std::condition_variable done_;
  std::map<std::string, std::vector<int32_t>> tokens_;
  std::map<std::string, int> finals_;
  std::map<std::string, std::string> reasons_;
};

std::shared_ptr<Sequence> Request(const std::string& id, std::vector<int32_t> prompt, int max_tokens) {
  auto sequence = std::make_shared<Sequence>();
  sequence->request_id = id;
  sequence->prompt_token_ids = std::move(prompt);
  sequence->max_tokens = max_tokens;
  sequence->ignore_eos = true;
  return sequence;
}

std::unique_ptr<Engine> MakeEngine(int64_t kv_blocks, EngineOptions options = {}) {
  auto model = TinyLlama();
  // 2 layers x 2 KV heads x head_dim 8 x 4 tokens x (keys + values) x 4 bytes = 1 KiB per block.
  auto runner = ModelRunner::Create(model, {.kv_cache_memory_bytes = kv_blocks * 1024, .block_size = 4});
  TORCH_CHECK(runner.ok(), runner.status().ToString());
  if (options.max_model_len == 0) options.max_model_len = 64;
  return std::make_unique<Engine>(std::move(*runner), options, std::vector<int32_t>{2}, "tiny");
}

TEST(EngineTest, ConcurrentRequestsGetTheTokensTheyGetAlone) {
  const std::vector<std::vector<int32_t>> prompts = {{5, 6, 7}, {8, 9, 10, 11, 12, 13, 14, 15, 16}, {20}};
  std::vector<std::vector<int32_t>> alone;
  {
    auto engine = MakeEngine(64);
    Outputs outputs;
    for (size_t i = 0; i < prompts.size(); ++i) {
      const std::string id = "alone-" + std::to_string(i);
      ASSERT_TRUE(engine->Add(Request(id, prompts[i], 6), outputs.For(id)).ok());
      outputs.WaitFor({id});
      alone.push_back(outputs.tokens(id));
    }
  }
  auto engine = MakeEngine(64, {.max_num_batched_tokens = 5});  // prompts are chunked
  Outputs outputs;
  std::vector<std::string> ids;
  for (size_t i = 0; i < prompts.size(); ++i) {
    ids.push_back("batched-" + std::to_string(i));
    ASSERT_TRUE(engine->Add(Request(ids.back(), prompts[i], 6), outputs.For(ids.back())).ok());
  }
  outputs.WaitFor(ids);
  for (size_t i = 0; i < prompts.size(); ++i) {
    EXPECT_EQ(outputs.tokens(ids[i]), alone[i]) << "request " << i;
    EXPECT_EQ(outputs.tokens(ids[i]).size(), 6u);
    EXPECT_EQ(outputs.reason(ids[i]), "length");
    EXPECT_EQ(outputs.finals(ids[i]), 1);
  }
  EXPECT_EQ(engine->Load().kv_blocks_used, 0);  // no prefix caching of partial blocks left in use
}

TEST(EngineTest, AbortFreesTheBlocksAndGivesOneFinalOutput) {
  auto engine = MakeEngine(64);
  Outputs outputs;
  ASSERT_TRUE(engine->Add(Request("long", {5, 6, 7, 8, 9}, 50), outputs.For("long")).ok());
  while (outputs.tokens("long").size() < 2) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  engine->Abort("long");
  outputs.WaitFor({"long"});
  EXPECT_EQ(outputs.reason("long"), "abort");
  EXPECT_LT(outputs.tokens("long").size(), 50u);
  EXPECT_TRUE(engine->WaitUntilIdle(std::chrono::steady_clock::now() + std::chrono::seconds(10)));
  EXPECT_EQ(engine->Load().num_requests_running, 0);
  EXPECT_EQ(engine->Load().kv_blocks_used, 0);
  EXPECT_EQ(outputs.finals("long"), 1);
}

TEST(EngineTest, RefusesWhatCannotRunAndDrains) {
  auto engine = MakeEngine(64);
  Outputs outputs;
  std::vector<int32_t> too_long(64, 5);
  absl::Status status = engine->Add(Request("too-long", too_long, 1), outputs.For("too-long"));
  EXPECT_TRUE(absl::IsInvalidArgument(status)) << status;
  EXPECT_NE(status.message().find("64"), std::string::npos);
  ASSERT_TRUE(engine->Add(Request("twice", {5}, 3), outputs.For("twice")).ok());
  EXPECT_TRUE(absl::IsAlreadyExists(engine->Add(Request("twice", {5}, 3), outputs.For("twice-2"))));
  engine->StartDrain();
  EXPECT_TRUE(absl::IsUnavailable(engine->Add(Request("late", {5}, 3), outputs.For("late"))));
  outputs.WaitFor({"twice"});  // the running one still finishes
  EXPECT_EQ(outputs.tokens("twice").size(), 3u);
  EXPECT_TRUE(engine->Load().draining);
}

TEST(EngineTest, ASmallPoolPreemptsAndEveryoneStillFinishesWithTheSameTokens) {
  const std::vector<std::vector<int32_t>> prompts = {{5, 6, 7, 8, 9, 10}, {11, 12, 13, 14, 15}, {16, 17, 18, 19}};
  std::vector<std::vector<int32_t>> alone;
  {
    auto engine = MakeEngine(64);
    Outputs outputs;
    for (size_t i = 0; i < prompts.size(); ++i) {
      const std::string id = "alone-" + std::to_string(i);
      ASSERT_TRUE(engine->Add(Request(id, prompts[i], 16), outputs.For(id)).ok());
      outputs.WaitFor({id});
      alone.push_back(outputs.tokens(id));
    }
  }
  // 14 blocks of 4 tokens: max_model_len 48 fits, three sequences of ~20 tokens (16 blocks) do not.
  auto engine = MakeEngine(14, {.max_model_len = 48});
  Outputs outputs;
  std::vector<std::string> ids;
  for (size_t i = 0; i < prompts.size(); ++i) {
    ids.push_back("tight-" + std::to_string(i));
    ASSERT_TRUE(engine->Add(Request(ids.back(), prompts[i], 16), outputs.For(ids.back())).ok());
  }
  outputs.WaitFor(ids);
  for (size_t i = 0; i < prompts.size(); ++i) EXPECT_EQ(outputs.tokens(ids[i]), alone[i]) << "request " << i;
  EXPECT_GT(engine->Load().num_preemptions, 0);
}

}  // namespace
}  // namespace flotilla::worker
