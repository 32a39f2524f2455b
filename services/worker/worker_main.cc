// The worker service binary, in one of three roles:
//   - without --rank: the replica's agent (worker_group.h), which pulls the model once, starts
//     --tensor_parallel_size rank processes of this binary and restarts them all when one dies;
//   - --rank=0: the replica's gRPC face. With --model it loads the model (a folder, or a registry
//     reference pulled once per commit into <data_dir>/cache), sizes its KV pool, starts the engine
//     and registers with the gateways given by --gateways; without it, it answers Matmul and
//     GetWorkerInfo only;
//   - --rank=r > 0: a follower: loads its shard and runs rank 0's steps (ModelRunner::FollowSteps).
// Ranks of a group rendezvous through a store that rank 0 hosts at --master_address:--master_port.
#include <malloc.h>
#include <signal.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <absl/flags/declare.h>
#include <absl/flags/flag.h>
#include <absl/flags/parse.h>
#include <absl/strings/ascii.h>
#include <absl/strings/str_cat.h>
#include <absl/strings/str_split.h>
#include <torch/version.h>

#include "kernels/hub/hub_kernel.h"
#include "models/auto.h"
#include "models/kernelize.h"
#include "services/common/logging.h"
#include "services/common/server.h"
#include "services/preprocess/tokenizer/tokenizer_settings.h"
#include "services/registry/names.h"
#include "services/registry/registry_client.h"
#include "services/worker/device.h"
#include "services/worker/gateway_registration.h"
#include "services/worker/worker_group.h"
#include "services/worker/worker_service.h"

ABSL_FLAG(std::string, model, "", "a model folder or a registry reference namespace/name[@revision] to serve");
ABSL_FLAG(std::string, served_model_name, "", "the name clients use (default: the repository or folder name)");
ABSL_FLAG(int32_t, replica, 0, "this worker group's replica index among those serving the model");
ABSL_FLAG(std::string, gateways, "", "comma-separated gateway gRPC addresses to register with");
ABSL_FLAG(std::string, advertise_address, "",
          "the address gateways reach this worker at (default: the gRPC listen address; on Kubernetes, the pod IP)");
ABSL_FLAG(std::string, registry, "", "registry gRPC address for references (default $FLOTILLA_REGISTRY)");
ABSL_FLAG(std::string, cache_dir, "", "where registry models are pulled, one folder per commit (default <data_dir>/cache)");
ABSL_FLAG(std::string, dtype, "float32", "float32 or bfloat16");
ABSL_FLAG(std::string, device, "cpu",
          "cpu, cuda (rank r of a tensor-parallel group on cuda:r, collectives over NCCL) or cuda:N (one rank)");
ABSL_FLAG(std::string, attention, "", "attention implementation: paged, sdpa or eager (default: paged to generate, sdpa to embed)");
ABSL_FLAG(int64_t, kv_cache_memory, 1LL << 30, "bytes of KV-cache blocks (keys and values of every layer)");
ABSL_FLAG(int32_t, kv_block_size, 16, "tokens per KV-cache block");
ABSL_FLAG(int32_t, max_model_len, 0, "longest sequence (prompt + output); 0: the model's, capped by the KV pool");
ABSL_FLAG(int32_t, max_num_batched_tokens, 512, "token budget of one engine step (chunked prefill splits longer prompts)");
ABSL_FLAG(int32_t, max_num_seqs, 64, "most sequences in one step");
ABSL_FLAG(bool, enable_prefix_caching, true, "reuse the KV blocks of prompt prefixes seen before");
ABSL_FLAG(std::string, task, "auto", "generate, embed, classify, or auto (from the architecture)");
ABSL_FLAG(int32_t, tensor_parallel_size, 1, "ranks (processes) that share the model, each holding 1/N of its weights");
ABSL_FLAG(int32_t, rank, -1,
          "this process's rank in its tensor-parallel group; unset: run as the replica's agent, which starts every "
          "rank and restarts the group when one dies");
ABSL_FLAG(std::string, master_address, "127.0.0.1",
          "where rank 0 hosts the group's rendezvous store (as torchrun's MASTER_ADDR)");
ABSL_FLAG(int32_t, master_port, 0, "the rendezvous store's port (as MASTER_PORT); 0: the agent picks a free one");
ABSL_FLAG(double, tensor_parallel_timeout, 60,
          "seconds a rank waits for its group: to join it, and for each collective");
ABSL_FLAG(std::string, tp_plan, "",
          "a JSON file holding a tensor-parallel plan that overrides the model's (base_model_tp_plan's format; "
          "\"lm_head\" names the head)");

// Default: every builtin CPU kernel (greedy outputs unchanged: models/kernelize_test.cc).
ABSL_FLAG(std::string, kernels, "RMSNorm=builtin,SiluAndMul=builtin,RotaryEmbedding=builtin,PagedAttention=builtin,Linear=builtin",
          "kernel mapping Name=eager|builtin|namespace/name[@revision],... for RMSNorm, SiluAndMul, RotaryEmbedding, "
          "PagedAttention, Linear (models/kernelize.h; a name left out of a given mapping is eager, PagedAttention "
          "builtin); a hub kernel that cannot load leaves its layer eager");

ABSL_DECLARE_FLAG(std::string, data_dir);

namespace flotilla {
namespace {

std::string TaskFor(const std::string& architecture, const std::string& requested) {
  if (requested != "auto") return requested;
  if (architecture.ends_with("ForCausalLM") || architecture.ends_with("LMHeadModel")) return "generate";
  if (architecture.ends_with("ForSequenceClassification")) return "classify";
  return "embed";
}

int64_t ConfigInt(const nlohmann::json& config, std::initializer_list<const char*> keys, int64_t fallback) {
  for (const char* key : keys) {
    if (config.contains(key) && config[key].is_number_integer()) return config[key].get<int64_t>();
  }
  return fallback;
}

// Where registry models and hub kernels are pulled: --cache_dir, else <data_dir>/cache.
std::string CacheDirectory(const ServerOptions& options) {
  if (!absl::GetFlag(FLAGS_cache_dir).empty()) return absl::GetFlag(FLAGS_cache_dir);
  return options.data_directory.empty() ? (std::filesystem::temp_directory_path() / "flotilla-worker-cache").string()
                                        : (std::filesystem::path(options.data_directory) / "cache").string();
}

// --registry, else $FLOTILLA_REGISTRY ("" when neither is set).
std::string RegistryAddress() {
  if (!absl::GetFlag(FLAGS_registry).empty()) return absl::GetFlag(FLAGS_registry);
  const char* from_environment = std::getenv("FLOTILLA_REGISTRY");
  return from_environment != nullptr ? from_environment : "";
}

absl::StatusOr<std::string> ResolveFolder(const std::string& model, const ServerOptions& options) {
  std::error_code error;
  if (std::filesystem::is_directory(model, error)) return std::filesystem::absolute(model).string();
  if (!registry::ParseReference(model).ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--model ", model, " is neither a folder nor a registry reference namespace/name[@revision]"));
  }
  const std::string address = RegistryAddress();
  if (address.empty()) return absl::InvalidArgumentError(absl::StrCat("--model ", model, " is a registry reference: pass --registry"));
  const char* token = std::getenv("FLOTILLA_TOKEN");
  registry::RegistryClient client(address, token ? token : "");
  return client.PullToCache(model, CacheDirectory(options));
}

absl::StatusOr<at::ScalarType> DtypeFromFlag() {
  const std::string name = absl::GetFlag(FLAGS_dtype);
  if (name != "float32" && name != "bfloat16") {
    return absl::InvalidArgumentError(absl::StrCat("--dtype must be float32 or bfloat16, got ", name));
  }
  return name == "bfloat16" ? at::kBFloat16 : at::kFloat;
}

// --tp_plan's contents, or null when unset.
absl::StatusOr<nlohmann::json> PlanFromFlag() {
  const std::string path = absl::GetFlag(FLAGS_tp_plan);
  if (path.empty()) return nlohmann::json();
  std::ifstream file(path);
  if (!file) return absl::NotFoundError(absl::StrCat("--tp_plan ", path, ": cannot open the file"));
  nlohmann::json plan = nlohmann::json::parse(file, nullptr, /*allow_exceptions=*/false);
  if (plan.is_discarded() || !plan.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat("--tp_plan ", path, ": not a JSON object of module pattern -> style"));
  }
  return plan;
}

// Before the model loads, on every rank: a mapping that does not parse fails the start; a hub
// kernel that cannot load is logged and its layer stays eager (models/kernelize.h).
absl::Status InstallKernelsFromFlags(const ServerOptions& options) {
  const char* token = std::getenv("FLOTILLA_TOKEN");
  absl::StatusOr<models::LayerKernels> layer_kernels = models::ResolveLayerKernels(
      absl::GetFlag(FLAGS_kernels),
      kernels::RegistryHubKernelLoader(RegistryAddress(), token ? token : "", CacheDirectory(options)));
  if (!layer_kernels.ok()) return layer_kernels.status();
  models::InstallLayerKernels(*layer_kernels);
  return absl::OkStatus();
}

// This rank's group (null for one process): rank 0 hosts the store, the others connect.
absl::StatusOr<std::shared_ptr<models::TensorParallelGroup>> JoinGroup(int rank, const worker::WorkerDevice& device) {
  const int world_size = absl::GetFlag(FLAGS_tensor_parallel_size);
  if (world_size < 1) return absl::InvalidArgumentError("--tensor_parallel_size must be at least 1");
  if (world_size == 1) return std::shared_ptr<models::TensorParallelGroup>();
  if (absl::GetFlag(FLAGS_master_port) <= 0) {
    return absl::InvalidArgumentError("--tensor_parallel_size > 1 needs --master_port (the agent passes a free one)");
  }
  LogInfo("joining the tensor-parallel group",
          {{"rank", rank}, {"world_size", world_size},
           {"master", absl::StrCat(absl::GetFlag(FLAGS_master_address), ":", absl::GetFlag(FLAGS_master_port))},
           {"backend", device.tensor_parallel_backend}});
  return models::TensorParallelGroup::Join(
      {.rank = rank, .world_size = world_size, .master_address = absl::GetFlag(FLAGS_master_address),
       .master_port = absl::GetFlag(FLAGS_master_port),
       .timeout = absl::Seconds(absl::GetFlag(FLAGS_tensor_parallel_timeout)),
       .backend = device.tensor_parallel_backend});
}

// Loads the model for this rank (its shard under tensor parallelism) with the requested attention,
// then moves it to the rank's device (from the mapped checkpoint, one copy per tensor).
absl::StatusOr<std::shared_ptr<models::PreTrainedModel>> LoadModel(const std::string& folder, at::ScalarType dtype,
                                                                   std::shared_ptr<models::TensorParallelGroup> group,
                                                                   const nlohmann::json& plan, c10::Device device) {
  const std::string attention = absl::GetFlag(FLAGS_attention);
  models::LoadOptions load_options{.attn_implementation = attention.empty() ? "sdpa" : attention, .dtype = dtype};
  load_options.tensor_parallel_group = std::move(group);
  load_options.tensor_parallel_plan = plan;
  try {
    models::CheckAttentionImplementation(load_options.attn_implementation);
  } catch (const c10::Error& error) {
    return absl::InvalidArgumentError(absl::StrCat("--attention ", attention, ": ", error.what_without_backtrace()));
  }
  absl::StatusOr<std::shared_ptr<models::PreTrainedModel>> model = models::FromPretrained(folder, load_options);
  if (!model.ok() || device.is_cpu()) return model;
  try {
    (*model)->to(device);
  } catch (const c10::Error& error) {
    return absl::ResourceExhaustedError(
        absl::StrCat("moving the model to ", device.str(), " failed: ", error.what_without_backtrace()));
  }
  return model;
}

worker::ModelRunnerOptions RunnerOptions(const models::PreTrainedModel& model, at::ScalarType dtype,
                                         std::shared_ptr<models::TensorParallelGroup> group, c10::Device device) {
  worker::ModelRunnerOptions options{.kv_cache_memory_bytes = absl::GetFlag(FLAGS_kv_cache_memory),
                                     .block_size = absl::GetFlag(FLAGS_kv_block_size),
                                     .kv_dtype = dtype,
                                     .device = device};
  if (group != nullptr) {
    // The plan the loader sharded the model by (a --tp_plan file's, config.json's or the model's).
    options.key_value_head_shards = models::KeyValueHeadShards(model.tensor_parallel_plan(), group->world_size());
    options.tensor_parallel_group = std::move(group);
  }
  return options;
}

// A rank > 0: joins the group, loads its shard, then runs rank 0's steps until rank 0 releases it.
int RunFollower(int argc, char** argv) {
  // Stop signals are rank 0's business: it drains, then releases the followers.
  signal(SIGTERM, SIG_IGN);
  signal(SIGINT, SIG_IGN);
  signal(SIGPIPE, SIG_IGN);
  absl::ParseCommandLine(argc, argv);
  const int rank = absl::GetFlag(FLAGS_rank);
  auto fail = [rank](const absl::Status& status, int code) {
    LogError("tensor-parallel follower failed", {{"rank", rank}, {"error", std::string(status.message())}});
    return code;
  };
  if (absl::GetFlag(FLAGS_model).empty()) return fail(absl::InvalidArgumentError("a rank > 0 needs --model"), 1);
  if (rank >= absl::GetFlag(FLAGS_tensor_parallel_size)) {
    return fail(absl::InvalidArgumentError(absl::StrCat("--rank ", rank, " is outside --tensor_parallel_size ",
                                                        absl::GetFlag(FLAGS_tensor_parallel_size))), 1);
  }
  absl::StatusOr<at::ScalarType> dtype = DtypeFromFlag();
  if (!dtype.ok()) return fail(dtype.status(), 1);
  absl::StatusOr<nlohmann::json> plan = PlanFromFlag();
  if (!plan.ok()) return fail(plan.status(), 1);
  absl::StatusOr<worker::WorkerDevice> device =
      worker::PrepareDevice(absl::GetFlag(FLAGS_device), rank, absl::GetFlag(FLAGS_tensor_parallel_size));
  if (!device.ok()) return fail(device.status(), 1);
  ServerOptions options;
  options.data_directory = absl::GetFlag(FLAGS_data_dir);
  if (absl::Status installed = InstallKernelsFromFlags(options); !installed.ok()) return fail(installed, 1);
  absl::StatusOr<std::string> folder = ResolveFolder(absl::GetFlag(FLAGS_model), options);
  if (!folder.ok()) return fail(folder.status(), 1);
  absl::StatusOr<std::shared_ptr<models::TensorParallelGroup>> group = JoinGroup(rank, *device);
  if (!group.ok()) return fail(group.status(), 1);
  absl::StatusOr<std::shared_ptr<models::PreTrainedModel>> model = LoadModel(*folder, *dtype, *group, *plan, device->device);
  if (!model.ok()) return fail(model.status(), 1);
  if (absl::GetFlag(FLAGS_attention).empty()) (*model)->SetAttentionImplementation("paged");
  absl::StatusOr<std::unique_ptr<worker::ModelRunner>> runner =
      worker::ModelRunner::Create(*model, RunnerOptions(**model, *dtype, *group, device->device));
  if (!runner.ok()) return fail(runner.status(), 1);
  LogInfo("tensor-parallel follower ready", {{"rank", rank}, {"kv_cache_blocks", (*runner)->num_blocks()}});
  if (absl::Status status = (*runner)->FollowSteps(); !status.ok()) {
    return fail(status, worker::kExitTensorParallelGroupBroken);
  }
  LogInfo("tensor-parallel follower released by rank 0", {{"rank", rank}});
  return 0;
}

// No --rank: the replica's agent. It pulls a registry model once (so that the ranks find it in
// the cache instead of racing to download it), then starts and watches the ranks.
int RunAgent(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  const std::string model = absl::GetFlag(FLAGS_model);
  std::error_code error;
  if (!model.empty() && !std::filesystem::is_directory(model, error)) {
    ServerOptions options;
    options.data_directory = absl::GetFlag(FLAGS_data_dir);
    if (absl::StatusOr<std::string> folder = ResolveFolder(model, options); !folder.ok()) {
      std::fprintf(stderr, "flotilla-worker: %s\n", std::string(folder.status().message()).c_str());
      return 1;
    }
  }
  const int world_size = absl::GetFlag(FLAGS_tensor_parallel_size);
  if (world_size < 1) {
    std::fprintf(stderr, "flotilla-worker: --tensor_parallel_size must be at least 1\n");
    return 1;
  }
  if (world_size > 1 && model.empty()) {
    std::fprintf(stderr, "flotilla-worker: --tensor_parallel_size > 1 needs --model\n");
    return 1;
  }
  worker::WorkerGroupOptions options;
  options.executable = std::filesystem::read_symlink("/proc/self/exe", error).string();
  if (error) options.executable = argv[0];
  options.arguments.assign(argv + 1, argv + argc);
  options.world_size = world_size;
  options.master_address = absl::GetFlag(FLAGS_master_address);
  options.master_port = absl::GetFlag(FLAGS_master_port);
  return worker::RunWorkerGroup(options);
}

absl::StatusOr<ServiceBundle> CreateWorker(const ServerOptions& options) {
  ServiceBundle bundle;
  const std::string model_flag = absl::GetFlag(FLAGS_model);
  if (model_flag.empty()) {
    bundle.grpc_services.push_back(std::make_unique<WorkerServiceImpl>());
    return bundle;
  }
  const std::string dtype_name = absl::GetFlag(FLAGS_dtype);
  absl::StatusOr<at::ScalarType> parsed_dtype = DtypeFromFlag();
  if (!parsed_dtype.ok()) return parsed_dtype.status();
  const at::ScalarType dtype = *parsed_dtype;
  absl::StatusOr<nlohmann::json> plan = PlanFromFlag();
  if (!plan.ok()) return plan.status();
  absl::StatusOr<worker::WorkerDevice> device =
      worker::PrepareDevice(absl::GetFlag(FLAGS_device), /*rank=*/0, absl::GetFlag(FLAGS_tensor_parallel_size));
  if (!device.ok()) return device.status();
  if (absl::Status installed = InstallKernelsFromFlags(options); !installed.ok()) return installed;
  absl::StatusOr<std::string> folder = ResolveFolder(model_flag, options);
  if (!folder.ok()) return folder.status();
  absl::StatusOr<std::shared_ptr<models::TensorParallelGroup>> group = JoinGroup(/*rank=*/0, *device);
  if (!group.ok()) return group.status();

  auto served = std::make_shared<ServedModel>();
  std::string attention = absl::GetFlag(FLAGS_attention);
  absl::StatusOr<std::shared_ptr<models::PreTrainedModel>> model = LoadModel(*folder, dtype, *group, *plan, device->device);
  if (!model.ok()) return model.status();
  served->model = *model;
  served->device = device->device;
  const models::PretrainedConfig& config = served->model->config();
  // The class that loaded (torch::nn::Module::name() is its demangled name), not config.json's
  // architectures: a folder may name none, or a bare class may load from a head checkpoint.
  std::string architecture = served->model->name();
  if (const size_t colon = architecture.rfind(':'); colon != std::string::npos) architecture = architecture.substr(colon + 1);
  const std::string task = TaskFor(architecture, absl::GetFlag(FLAGS_task));
  if (task != "generate" && task != "embed" && task != "classify") {
    return absl::InvalidArgumentError(absl::StrCat("--task must be auto, generate, embed or classify, got ", task));
  }
  if (*group != nullptr && task != "generate") {
    return absl::InvalidArgumentError(absl::StrCat("--tensor_parallel_size ", (*group)->world_size(), ": ", architecture,
                                                   " is served for ", task,
                                                   ", and tensor parallelism serves generation only"));
  }
  if (attention == "sdpa" && config.source.contains("attn_logit_softcapping") &&
      !config.source["attn_logit_softcapping"].is_null()) {
    // at::scaled_dot_product_attention has no softcap: every request would fail at its first step.
    return absl::InvalidArgumentError(absl::StrCat("--attention sdpa: ", architecture,
                                                   " caps its attention logits (attn_logit_softcapping), which sdpa "
                                                   "cannot do; use --attention paged (the default) or eager"));
  }
  if (attention.empty()) {
    // Generation reads the paged KV cache in place; a padded encoder batch has no cache to page.
    attention = task == "generate" ? "paged" : "sdpa";
    served->model->SetAttentionImplementation(attention);
  } else if (attention == "paged" && task != "generate") {
    return absl::InvalidArgumentError(absl::StrCat("--attention paged serves generation only; ", architecture,
                                                   " is served for ", task, " (use sdpa or eager)"));
  }

  int64_t max_model_len = ConfigInt(config.source, {"max_position_embeddings", "n_positions"}, 2048);
  if (absl::GetFlag(FLAGS_max_model_len) > 0) {
    if (absl::GetFlag(FLAGS_max_model_len) > max_model_len) {
      LogWarning("--max_model_len exceeds the model's max_position_embeddings",
                 {{"max_model_len", absl::GetFlag(FLAGS_max_model_len)}, {"max_position_embeddings", max_model_len}});
    }
    max_model_len = absl::GetFlag(FLAGS_max_model_len);
  }

  flotilla::v1::WorkerInfo& info = served->info;
  info.set_world_size(absl::GetFlag(FLAGS_tensor_parallel_size));
  info.set_device(device->device.str());
  info.set_torch_version(TORCH_VERSION);
  if (std::filesystem::is_directory(model_flag)) {
    info.mutable_model()->set_local_path(*folder);
  } else {
    absl::StatusOr<registry::ParsedReference> reference = registry::ParseReference(model_flag);
    info.mutable_model()->set_namespace_(reference->namespace_name);
    info.mutable_model()->set_name(reference->name);
    info.mutable_model()->set_revision(reference->revision);
    // The cache folder is <cache>/<namespace>/<name>/<commit id>.
    info.set_commit_id(std::filesystem::path(*folder).filename().string());
  }
  std::string served_name = absl::GetFlag(FLAGS_served_model_name);
  if (served_name.empty()) served_name = registry::DefaultServedModelName(model_flag);
  info.set_served_model_name(served_name);
  info.set_task(task);
  info.set_attention_implementation(attention);
  info.set_dtype(dtype_name);
  info.set_vocab_size(static_cast<int32_t>(ConfigInt(config.source, {"vocab_size"}, 0)));

  if (task == "generate") {
    worker::ModelRunnerOptions runner_options = RunnerOptions(*served->model, dtype, *group, device->device);
    absl::StatusOr<std::unique_ptr<worker::ModelRunner>> runner = worker::ModelRunner::Create(served->model, runner_options);
    if (!runner.ok()) return runner.status();
    const int64_t capacity = (*runner)->num_blocks() * (*runner)->block_size();
    if (capacity < max_model_len) {
      LogInfo("max_model_len capped by the KV pool", {{"max_model_len", max_model_len}, {"kv_capacity_tokens", capacity}});
      max_model_len = capacity;
    }
    info.set_kv_cache_blocks(static_cast<int32_t>((*runner)->num_blocks()));
    info.set_kv_block_size(static_cast<int32_t>((*runner)->block_size()));
    // The stop ids: generation_config.json's, else config.json's (the gateway's reader).
    absl::StatusOr<tokenizer::GenerationDefaults> generation = tokenizer::LoadGenerationDefaults(*folder);
    if (!generation.ok()) return generation.status();
    std::vector<int32_t> eos_token_ids;
    for (int64_t id : generation->eos_token_ids.empty() ? config.eos_token_id : generation->eos_token_ids) {
      eos_token_ids.push_back(static_cast<int32_t>(id));
    }
    worker::EngineOptions engine_options{.max_num_batched_tokens = absl::GetFlag(FLAGS_max_num_batched_tokens),
                                         .max_num_seqs = absl::GetFlag(FLAGS_max_num_seqs),
                                         .max_model_len = static_cast<int>(max_model_len),
                                         .enable_prefix_caching = absl::GetFlag(FLAGS_enable_prefix_caching)};
    served->engine = std::make_unique<worker::Engine>(std::move(*runner), engine_options, std::move(eos_token_ids), served_name);
  } else if (task == "embed") {
    absl::StatusOr<models::SentenceEmbeddingConfig> pooling = models::ReadSentenceEmbeddingConfig(*folder);
    if (!pooling.ok()) return pooling.status();
    served->pooling = *pooling;
    if (pooling->max_seq_length.has_value()) max_model_len = std::min(max_model_len, *pooling->max_seq_length);
  }
  info.set_max_model_len(static_cast<int32_t>(max_model_len));
  LogInfo("model loaded", {{"model", model_flag}, {"served_model_name", served_name}, {"task", task},
                           {"architecture", architecture}, {"max_model_len", max_model_len},
                           {"kv_cache_blocks", info.kv_cache_blocks()}, {"attention", attention}, {"dtype", dtype_name}});

  std::vector<std::string> gateways;
  for (absl::string_view address : absl::StrSplit(absl::GetFlag(FLAGS_gateways), ',', absl::SkipWhitespace())) {
    gateways.emplace_back(address);
  }
  struct WorkerState {
    std::shared_ptr<ServedModel> served;
    std::unique_ptr<GatewayRegistration> registration;
    std::string address;
    int32_t replica = 0;
  };
  auto state = std::make_shared<WorkerState>();
  state->served = served;
  state->replica = absl::GetFlag(FLAGS_replica);
  state->registration = std::make_unique<GatewayRegistration>(gateways, [state]() {
    flotilla::v1::WorkerReport report;
    *report.mutable_info() = state->served->info;
    report.set_address(state->address);
    report.set_replica(state->replica);
    if (state->served->engine != nullptr) *report.mutable_load() = LoadToProto(state->served->engine->Load());
    return report;
  });
  if (served->engine != nullptr) {
    GatewayRegistration* registration = state->registration.get();
    served->engine->SetStepObserver([registration] { registration->ReportNow(); });
  }
  bundle.grpc_services.push_back(std::make_unique<WorkerServiceImpl>(served));
  bundle.on_serving = [state](const std::string& grpc_address, const std::string&) {
    state->address = absl::GetFlag(FLAGS_advertise_address).empty() ? grpc_address : absl::GetFlag(FLAGS_advertise_address);
    state->registration->Start();
  };
  bundle.on_drain = [state](absl::Time deadline) {
    // Stop admitting, tell the gateways (they route elsewhere), finish what runs, then leave.
    if (state->served->engine != nullptr) state->served->engine->StartDrain();
    state->registration->ReportNow();
    if (state->served->engine != nullptr) {
      state->served->engine->WaitUntilIdle(std::chrono::steady_clock::now() +
                                           absl::ToChronoNanoseconds(std::max(absl::ZeroDuration(), deadline - absl::Now())));
      // Releases the tensor-parallel followers before this rank leaves.
      state->served->engine->Stop();
    }
    state->registration->Stop();
  };
  bundle.state = state;
  return bundle;
}

}  // namespace
}  // namespace flotilla

namespace {

// --rank's value as given on the command line (flags are parsed by the role that runs).
std::optional<int> RankArgument(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    const std::string_view argument = argv[i];
    if (argument == "--rank" && i + 1 < argc) return std::atoi(argv[i + 1]);
    if (argument.starts_with("--rank=")) return std::atoi(argv[i] + 7);
  }
  return std::nullopt;
}

// Note [One OpenMP team per worker]
// libgomp lets a team's idle threads spin between parallel regions only while the process has no
// more OpenMP threads than CPUs; past that it parks them on a futex after a few hundred spins, and
// every one of a decode step's ~700 ATen ops pays for waking them. Each thread that starts a
// parallel region keeps its own team for its whole life, and the engine's thread owns one; if the
// main thread kept the team it made while loading, a 2-core machine would be past that line for
// good (SmolLM2 batch-1 decode through the gateway: ~10,000 context switches a second and 19.5–21.6 ms
// per token, against ~500 and 14.0–15.5 ms with the engine's team alone). So rank 0 loads on a thread
// that exits afterwards, taking its team with it; Forward and Embed run on short-lived threads for the
// same reason. Followers load and follow on their main thread: one team.
absl::StatusOr<flotilla::ServiceBundle> CreateWorkerOnPassingThread(const flotilla::ServerOptions& options) {
  std::optional<absl::StatusOr<flotilla::ServiceBundle>> bundle;
  std::exception_ptr failure;
  std::thread([&] {
    try {
      bundle.emplace(flotilla::CreateWorker(options));
    } catch (...) {
      failure = std::current_exception();  // rethrown on the main thread, as if the load ran there
    }
  }).join();
  if (failure) std::rethrow_exception(failure);
  return *std::move(bundle);
}

}  // namespace

int main(int argc, char** argv) {
  // A prefill chunk's activations are MiBs each ([256, 11008] float32 is 11 MiB), freed and asked
  // for again every step. glibc maps blocks that large afresh (and trims the heap as they are
  // freed), so every step faulted in and zeroed its activations' pages: at 256 x 4096 an eager
  // residual add + RMSNorm took 964-1422 us that way and 380-697 us with these limits
  // (kernels_bench, same run). Below them freed activations are reused (the registry and the CLI
  // do the same for their transfer buffers).
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 256 << 20);
  const std::optional<int> rank = RankArgument(argc, argv);
  if (!rank.has_value()) return flotilla::RunAgent(argc, argv);
  if (*rank > 0) return flotilla::RunFollower(argc, argv);
  return flotilla::ServiceMain(argc, argv, "worker", CreateWorkerOnPassingThread);
}
