// models_rope_dump CONFIG_JSON POSITIONS OUTPUT: writes inv_freq, cos and sin (float32, positions
// 0..POSITIONS-1, the dynamic update applied) for the config's rope parameters, so
// tests/models/test_rope.py can compare them with transformers' rotary embedding.
#include <cstdio>
#include <string>

#include "models/config.h"
#include "models/rope.h"
#include "models/safetensors.h"

int main(int argc, char** argv) {
  using namespace flotilla::models;
  if (argc != 4) {
    std::fprintf(stderr, "usage: models_rope_dump CONFIG_JSON POSITIONS OUTPUT\n");
    return 2;
  }
  auto json = ReadJsonFile(argv[1]);
  if (!json.ok()) {
    std::fprintf(stderr, "%s\n", std::string(json.status().message()).c_str());
    return 1;
  }
  ConfigReader reader(*json, argv[1]);
  const int64_t hidden_size = reader.Int("hidden_size", 4096);
  const int64_t heads = reader.Int("num_attention_heads", 32);
  const int64_t head_dim = reader.Int("head_dim", hidden_size / heads);
  const int64_t max_position_embeddings = reader.Int("max_position_embeddings", 2048);
  RopeParameters parameters = ParseRopeParameters(reader, 10000.0, max_position_embeddings);
  PretrainedConfig unused;
  if (auto status = reader.Finish(unused); !status.ok()) {
    std::fprintf(stderr, "%s\n", std::string(status.message()).c_str());
    return 1;
  }
  RopeFrequencies frequencies = ComputeRopeFrequencies(parameters, head_dim, max_position_embeddings);
  DynamicRopeState state{max_position_embeddings, max_position_embeddings, frequencies};
  at::Tensor position_ids = at::arange(std::stoll(argv[2]), at::kLong).unsqueeze(0);
  DynamicRopeUpdate(parameters, head_dim, max_position_embeddings, position_ids, state, frequencies);
  at::Tensor freqs = position_ids.unsqueeze(-1).to(at::kFloat) * frequencies.inv_freq;
  at::Tensor emb = at::cat({freqs, freqs}, -1);
  auto status = SaveSafetensors(argv[3], {{"inv_freq", frequencies.inv_freq},
                                          {"cos", emb.cos() * frequencies.attention_scaling},
                                          {"sin", emb.sin() * frequencies.attention_scaling},
                                          {"attention_scaling", at::tensor({frequencies.attention_scaling})}});
  if (!status.ok()) {
    std::fprintf(stderr, "%s\n", std::string(status.message()).c_str());
    return 1;
  }
  return 0;
}
