// Replaceable layers: the mapping's syntax, and that a model with every builtin kernel on computes
// what its eager forward computes (greedy tokens identical, logits within float32 noise).
#include "models/kernelize.h"

#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "kernels/kernels.h"
#include "models/attention.h"
#include "models/auto.h"
#include "models/cache.h"
#include "models/generation.h"
#include "models/layers.h"
#include "models/modeling_utils.h"
#include "services/common/metrics.h"

namespace flotilla::models {
namespace {

// Restores the default table when a test ends, so other suites in the binary run eager.
class KernelizeTest : public testing::Test {
 protected:
  void TearDown() override { InstallLayerKernels(LayerKernels{}); }
};

std::string Metrics() { return RenderMetrics(); }

TEST_F(KernelizeTest, ParsesEagerBuiltinAndRepositoryReferences) {
  auto parsed = ParseKernelMapping(" RMSNorm=builtin, SiluAndMul = eager,RotaryEmbedding=acme/rotary@v1 ");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ((*parsed)["RMSNorm"], "builtin");
  EXPECT_EQ((*parsed)["SiluAndMul"], "eager");
  EXPECT_EQ((*parsed)["RotaryEmbedding"], "acme/rotary@v1");
  EXPECT_TRUE(ParseKernelMapping("").ok());
}

TEST_F(KernelizeTest, RejectsUnknownNamesRepeatsAndBadValuesNamingThem) {
  auto unknown = ParseKernelMapping("LayerNorm=builtin");
  ASSERT_FALSE(unknown.ok());
  EXPECT_NE(unknown.status().message().find("unknown layer \"LayerNorm\""), std::string::npos) << unknown.status();
  auto repeated = ParseKernelMapping("RMSNorm=builtin,RMSNorm=eager");
  ASSERT_FALSE(repeated.ok());
  EXPECT_NE(repeated.status().message().find("given twice"), std::string::npos);
  auto bad_value = ParseKernelMapping("RMSNorm=fast");
  ASSERT_FALSE(bad_value.ok());
  EXPECT_NE(bad_value.status().message().find("RMSNorm=fast"), std::string::npos);
  EXPECT_FALSE(ParseKernelMapping("RMSNorm").ok());
  EXPECT_FALSE(ParseKernelMapping("RMSNorm=acme/").ok());
  EXPECT_FALSE(ParseKernelMapping("PagedAttention=acme/paged").ok());
  EXPECT_FALSE(ParseKernelMapping("Linear=acme/gemv").ok());
  EXPECT_TRUE(ParseKernelMapping("Linear=builtin").ok());
}

TEST_F(KernelizeTest, AHubReferenceThatFailsToLoadKeepsTheEagerForward) {
  auto kernels = ResolveLayerKernels("RMSNorm=acme/rmsnorm@main,SiluAndMul=builtin",
                                     [](KernelLayer, const std::string&, LayerKernels&) {
                                       return absl::NotFoundError("no variant for this platform");
                                     });
  ASSERT_TRUE(kernels.ok()) << kernels.status();
  EXPECT_EQ(kernels->source(KernelLayer::kRmsNorm), "eager");
  EXPECT_FALSE(kernels->rms_norm);
  EXPECT_EQ(kernels->source(KernelLayer::kSiluAndMul), "builtin");
  EXPECT_TRUE(kernels->silu_and_mul);
  EXPECT_EQ(kernels->source(KernelLayer::kPagedAttention), "builtin");  // the default
}

// An RMSNorm with the model files' eager formula, marked replaceable as they mark theirs.
class TestRmsNormImpl : public torch::nn::Module {
 public:
  explicit TestRmsNormImpl(int64_t hidden_size) : weight(at::rand({hidden_size}).add(0.5)) {}
  at::Tensor forward(const at::Tensor& hidden_states) {
    at::Tensor values = hidden_states.to(at::kFloat);
    values = values * at::rsqrt(values.pow(2).mean(-1, /*keepdim=*/true) + variance_epsilon);
    return weight * values.to(hidden_states.scalar_type());
  }
  at::Tensor weight;
  double variance_epsilon = 1e-5;
};
using TestRmsNorm = UseKernelForward<TestRmsNormImpl, KernelLayer::kRmsNorm>;

// A decoder layer's `residual + x`, then the norm: eager is exactly those two ops; the builtin
// kernel fuses them with the same sum and the norm within its tolerance, and never writes the
// residual (the layer's input).
TEST_F(KernelizeTest, AddAndForwardIsTheAddThenTheNormWithOrWithoutTheFusedKernel) {
  at::manual_seed(21);
  TestRmsNorm norm(576);
  const at::Tensor hidden_states = at::randn({1, 3, 576});
  const at::Tensor residual = at::randn({1, 3, 576}).mul(2);
  const at::Tensor residual_before = residual.clone();
  const at::Tensor expected_sum = residual + hidden_states;
  const at::Tensor expected = norm.TestRmsNormImpl::forward(expected_sum);

  InstallLayerKernels(*ResolveLayerKernels("RMSNorm=eager"));
  auto [eager_normalized, eager_sum] = norm.AddAndForward(hidden_states, residual);
  EXPECT_TRUE(at::equal(eager_sum, expected_sum));
  EXPECT_TRUE(at::equal(eager_normalized, expected));

  InstallLayerKernels(*ResolveLayerKernels("RMSNorm=builtin"));
  ASSERT_TRUE(CurrentLayerKernels().add_rms_norm);
  auto [fused_normalized, fused_sum] = norm.AddAndForward(hidden_states, residual);
  EXPECT_TRUE(at::equal(fused_sum, expected_sum)) << "the sum rounds as the eager add";
  EXPECT_LE((fused_normalized - expected).abs().max().item<double>(), 1e-6 * expected.abs().max().item<double>());
  EXPECT_TRUE(at::equal(residual, residual_before)) << "the layer's input is never written";
}

// Note [sdpa decode on the paged kernel]: a single-token query over the dynamic cache's views is
// answered by the builtin paged kernel reading the cache in place, and equals sdpa's answer (and a
// float64 reference) within float32 noise, in float32 and in bfloat16; a padding mask, or the
// kernel mapped to eager, keeps sdpa.
TEST_F(KernelizeTest, SdpaDecodeOverTheDynamicCacheMatchesSdpaOnThePagedKernel) {
  at::manual_seed(5);
  for (const at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
    const int64_t batch = 2, heads = 9, kv_heads = 3, head_dim = 64, prompt = 37;
    DynamicCache cache;
    cache.Reserve(batch, prompt + 8);
    cache.Update(at::randn({batch, kv_heads, prompt, head_dim}).to(dtype),
                 at::randn({batch, kv_heads, prompt, head_dim}).to(dtype), 0);
    auto [keys, values] = cache.Update(at::randn({batch, kv_heads, 1, head_dim}).to(dtype),
                                       at::randn({batch, kv_heads, 1, head_dim}).to(dtype), 0);
    ASSERT_EQ(keys.sizes(), (std::vector<int64_t>{batch, kv_heads, prompt + 1, head_dim}));
    // The query as a projection's output is: [batch, 1, heads, head_dim] transposed.
    const at::Tensor query = at::randn({batch, 1, heads, head_dim}).to(dtype).transpose(1, 2);
    AttentionArguments arguments;
    arguments.scaling = 0.125;
    arguments.num_key_value_groups = heads / kv_heads;

    InstallLayerKernels(*ResolveLayerKernels("PagedAttention=eager"));
    const at::Tensor sdpa = SdpaAttentionForward(query, keys, values, std::nullopt, arguments).first.to(at::kDouble);
    InstallLayerKernels(LayerKernels{});
    const std::string before = Metrics();
    const at::Tensor kernel = SdpaAttentionForward(query, keys, values, std::nullopt, arguments).first.to(at::kDouble);
    EXPECT_NE(Metrics(), before) << "the decode step counts a PagedAttention kernel call";

    const at::Tensor repeated_keys = RepeatKeyValue(keys.to(at::kDouble), heads / kv_heads);
    const at::Tensor repeated_values = RepeatKeyValue(values.to(at::kDouble), heads / kv_heads);
    const at::Tensor weights = at::softmax(at::matmul(query.to(at::kDouble), repeated_keys.transpose(2, 3)) * 0.125, -1);
    const at::Tensor reference = at::matmul(weights, repeated_values).transpose(1, 2);
    const double scale = reference.abs().max().item<double>();
    const double tolerance = dtype == at::kFloat ? 1e-6 : 1.0 / 256;  // the output's own rounding
    EXPECT_LE((kernel - reference).abs().max().item<double>(), tolerance * scale) << dtype;
    EXPECT_LE((kernel - sdpa).abs().max().item<double>(), 2 * tolerance * scale) << dtype;

    // A padding mask: sdpa answers (the kernel takes no mask), the same as with the kernel off.
    const at::Tensor mask = at::ones({batch, 1, 1, prompt + 1}, at::kBool);
    mask[0].narrow(-1, 0, 5).fill_(false);
    const at::Tensor masked = SdpaAttentionForward(query, keys, values, mask, arguments).first;
    InstallLayerKernels(*ResolveLayerKernels("PagedAttention=eager"));
    EXPECT_TRUE(at::equal(masked, SdpaAttentionForward(query, keys, values, mask, arguments).first)) << dtype;
    InstallLayerKernels(LayerKernels{});
  }
}

TEST_F(KernelizeTest, BuiltinKernelsTakeCudaTensorsOnlyWhereTheCudaKernelsAreLoaded) {
  const LayerKernels builtin = *ResolveLayerKernels("RMSNorm=builtin");
  EXPECT_TRUE(KernelRunsOn(KernelLayer::kRmsNorm, builtin, c10::Device("cpu")));
  // models_test never loads kernels/cuda: a CUDA tensor takes the eager forward.
  EXPECT_EQ(KernelRunsOn(KernelLayer::kRmsNorm, builtin, c10::Device("cuda:0")), kernels::HasCudaKernels());
  EXPECT_FALSE(KernelRunsOn(KernelLayer::kRmsNorm, builtin, c10::Device("meta")));
  LayerKernels hub = builtin;
  hub.sources[static_cast<int>(KernelLayer::kRmsNorm)] = "acme/rmsnorm@0123abcd";  // a CPU variant's library
  EXPECT_TRUE(KernelRunsOn(KernelLayer::kRmsNorm, hub, c10::Device("cpu")));
  EXPECT_FALSE(KernelRunsOn(KernelLayer::kRmsNorm, hub, c10::Device("cuda:0")));
}

nlohmann::json TinyConfig(const std::string& model_type, const std::string& architecture, nlohmann::json overrides) {
  nlohmann::json config = {{"model_type", model_type},      {"architectures", {architecture}},
                           {"vocab_size", 96},              {"hidden_size", 64},
                           {"intermediate_size", 96},       {"num_hidden_layers", 2},
                           {"num_attention_heads", 4},      {"num_key_value_heads", 2},
                           {"max_position_embeddings", 64}, {"rms_norm_eps", 1e-5},
                           {"bos_token_id", 1},             {"eos_token_id", 2}};
  if (overrides.is_object()) config.update(overrides);
  return config;
}

std::shared_ptr<PreTrainedModel> TinyModel(const nlohmann::json& config, at::ScalarType dtype) {
  auto model = ModelFromConfig(config, "config.json");
  TORCH_CHECK(model.ok(), model.status().ToString());
  torch::NoGradGuard no_grad;
  at::manual_seed(99);
  // Larger than a trained model's init so the logits have clear maxima (greedy is not a coin toss).
  for (auto& parameter : (*model)->parameters()) parameter.normal_(0.0, 0.25);
  // Norm weights near one, as trained models have them.
  for (auto& item : (*model)->named_parameters()) {
    if (item.key().find("norm") != std::string::npos) item.value().uniform_(0.5, 1.5);
  }
  (*model)->to(dtype);
  GroupSiblingProjections(**model);  // as FromPretrained does: q/k/v and gate/up in one pass
  return *model;
}

class KernelizeModelTest : public testing::TestWithParam<std::tuple<std::string, nlohmann::json>> {
 protected:
  void TearDown() override { InstallLayerKernels(LayerKernels{}); }
};

TEST_P(KernelizeModelTest, GreedyOutputsDoNotChangeWithEveryBuiltinKernelOn) {
  const auto& [name, config] = GetParam();
  std::shared_ptr<PreTrainedModel> model = TinyModel(config, at::kFloat);
  const at::Tensor prompt = at::tensor({5, 17, 33, 8, 61, 40, 12}, at::kLong).unsqueeze(0);
  GenerationOptions options{.max_new_tokens = 16, .eos_token_id = std::vector<int64_t>{}};

  InstallLayerKernels(
      *ResolveLayerKernels("RMSNorm=eager,SiluAndMul=eager,RotaryEmbedding=eager,PagedAttention=eager"));
  auto eager_tokens = GenerateGreedy(*model, prompt, std::nullopt, options);
  ASSERT_TRUE(eager_tokens.ok()) << eager_tokens.status();
  ForwardInputs inputs{.input_ids = prompt};
  const at::Tensor eager_logits = model->Forward(inputs).logits;

  InstallLayerKernels(*ResolveLayerKernels(
      "RMSNorm=builtin,SiluAndMul=builtin,RotaryEmbedding=builtin,Linear=builtin,PagedAttention=builtin"));
  auto kernel_tokens = GenerateGreedy(*model, prompt, std::nullopt, options);
  ASSERT_TRUE(kernel_tokens.ok()) << kernel_tokens.status();
  const at::Tensor kernel_logits = model->Forward(inputs).logits;

  EXPECT_TRUE(at::equal(*eager_tokens, *kernel_tokens)) << name << "\neager " << *eager_tokens << "\nkernels "
                                                        << *kernel_tokens;
  const double scale = eager_logits.abs().max().item<double>();
  EXPECT_LE((kernel_logits - eager_logits).abs().max().item<double>(), 1e-5 * scale) << name;

  // The layers really took the kernels (the metric says so).
  const std::string metrics = Metrics();
  // (PagedAttention: the decode steps' sdpa, Note [sdpa decode on the paged kernel].)
  for (const char* layer : {"RMSNorm", "SiluAndMul", "Linear", "PagedAttention"}) {
    EXPECT_NE(metrics.find(std::string("flotilla_kernel_forward_calls_total{layer=\"") + layer +
                           "\",source=\"builtin\"}"),
              std::string::npos)
        << metrics;
  }
}

TEST_P(KernelizeModelTest, ABatchOfRowsSharingPositionsMatchesEager) {
  // position_ids [1, length] for a [3, length] batch: one cos/sin row broadcast over the batch.
  const auto& [name, config] = GetParam();
  std::shared_ptr<PreTrainedModel> model = TinyModel(config, at::kFloat);
  ForwardInputs inputs{.input_ids = at::randint(3, 90, {3, 6}, at::kLong)};
  InstallLayerKernels(LayerKernels{});
  const at::Tensor eager_logits = model->Forward(inputs).logits;
  InstallLayerKernels(*ResolveLayerKernels("RMSNorm=builtin,SiluAndMul=builtin,RotaryEmbedding=builtin,Linear=builtin"));
  const at::Tensor kernel_logits = model->Forward(inputs).logits;
  EXPECT_LE((kernel_logits - eager_logits).abs().max().item<double>(), 1e-5 * eager_logits.abs().max().item<double>());
}

TEST_P(KernelizeModelTest, BFloat16LogitsStayWithinBFloat16RoundingWithKernelsOn) {
  const auto& [name, config] = GetParam();
  std::shared_ptr<PreTrainedModel> model = TinyModel(config, at::kBFloat16);
  ForwardInputs inputs{.input_ids = at::tensor({5, 17, 33, 8, 61, 40, 12, 9}, at::kLong).unsqueeze(0)};
  InstallLayerKernels(LayerKernels{});
  const at::Tensor eager_logits = model->Forward(inputs).logits.to(at::kFloat);
  InstallLayerKernels(*ResolveLayerKernels("RMSNorm=builtin,SiluAndMul=builtin,RotaryEmbedding=builtin,Linear=builtin"));
  const at::Tensor kernel_logits = model->Forward(inputs).logits.to(at::kFloat);
  const double scale = eager_logits.abs().max().item<double>();
  // A few bfloat16 roundings (2^-8 relative each) through two layers.
  EXPECT_LE((kernel_logits - eager_logits).abs().max().item<double>(), 4.0 / 256 * scale) << name;
}

INSTANTIATE_TEST_SUITE_P(
    Decoders, KernelizeModelTest,
    testing::Values(std::make_tuple("llama", TinyConfig("llama", "LlamaForCausalLM", {})),
                    std::make_tuple("qwen3", TinyConfig("qwen3", "Qwen3ForCausalLM", {{"head_dim", 24}})),
                    std::make_tuple("phi3", TinyConfig("phi3", "Phi3ForCausalLM", {})),
                    std::make_tuple("phi3_partial_rotary",
                                    TinyConfig("phi3", "Phi3ForCausalLM", {{"partial_rotary_factor", 0.5}}))),
    [](const auto& info) { return std::get<0>(info.param); });

}  // namespace
}  // namespace flotilla::models
