// flotilla serve / unserve: model workers on the running local mesh.
//
// `serve` starts one flotilla-worker process per replica, tells each the mesh's gateway and
// registry, and records it in <data>/run/mesh.json (mesh.h). Each worker loads the model, then
// registers with the gateway over WorkerRegistry.Register (gateway.proto); `serve` is done when the
// gateway's ListModels shows the name with every replica. `unserve` stops them as `down` stops
// services: SIGTERM (they drain), SIGKILL after --timeout.
//
// Exit codes: 1 no mesh, a worker that fails to start, or a timeout; 2 bad input; 3 unknown name
// (unserve); 4 a name already served.
#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <set>
#include <thread>

#include <absl/strings/str_cat.h>
#include <absl/strings/str_join.h>
#include <grpcpp/grpcpp.h>
#include <nlohmann/json.hpp>

#include "flotilla/v1/gateway.grpc.pb.h"
#include "services/registry/names.h"
#include "tools/cli/commands.h"
#include "tools/cli/local_processes.h"
#include "tools/cli/mesh.h"

namespace flotilla::cli {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;


std::string ServiceAddress(const MeshState& mesh, const std::string& service, bool http) {
  for (const MeshService& entry : mesh.services) {
    if (entry.name == service) return http ? entry.http_address : entry.grpc_address;
  }
  return "";
}

// The served names of the live workers, each once, sorted.
std::vector<std::string> ServedNames(const MeshState& mesh) {
  std::set<std::string> names;
  for (const MeshWorker& worker : mesh.workers) {
    if (IsFlotillaProcess(worker.pid)) names.insert(worker.name);
  }
  return {names.begin(), names.end()};
}

MeshState LoadMeshOrFail(const std::string& operation, const std::string& data_directory) {
  absl::StatusOr<MeshState> mesh = LoadRunningMesh(data_directory);
  if (!mesh.ok()) {
    throw CommandFailed(1, absl::StrCat(operation, ": no mesh is running (data directory ", data_directory,
                                        "): start one with `flotilla up`"));
  }
  return *std::move(mesh);
}

// Removes the workers with these pids from mesh.json (under the lock, so a concurrent `serve` of
// another model keeps its entries).
void ForgetWorkers(const std::string& data_directory, const std::set<int>& pids) {
  MeshLock lock(data_directory, MeshLock::Mode::kWait);
  absl::StatusOr<MeshState> mesh = LoadRunningMesh(data_directory);
  if (!mesh.ok()) return;  // `down` got there first: nothing left to forget
  std::erase_if(mesh->workers, [&](const MeshWorker& worker) { return pids.contains(worker.pid); });
  if (absl::Status saved = SaveMeshState(*mesh); !saved.ok()) std::fprintf(stderr, "flotilla: %s\n", saved.ToString().c_str());
}

// The model as the worker takes it: a folder made absolute (the worker runs in another
// directory), or a registry reference as given.
std::string ResolveModel(const std::string& model) {
  std::error_code error;
  if (fs::is_directory(model, error)) {
    fs::path folder = fs::absolute(model).lexically_normal();
    if (!folder.has_filename() && folder.has_parent_path()) folder = folder.parent_path();  // "models/x/"
    return folder.string();
  }
  if (!registry::ParseReference(model).ok()) {
    throw CommandFailed(2, absl::StrCat("serve ", model,
                                        ": neither a folder nor a registry reference namespace/name[@revision]"));
  }
  return model;
}

// One ListModels with a short deadline; nullopt while the gateway is briefly unreachable.
std::optional<flotilla::v1::ListModelsResponse> ListServedModels(flotilla::v1::GatewayService::Stub& gateway,
                                                                 const std::string& gateway_address) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
  flotilla::v1::ListModelsResponse response;
  const grpc::Status status = gateway.ListModels(&context, flotilla::v1::ListModelsRequest(), &response);
  if (status.ok()) return response;
  if (status.error_code() == grpc::StatusCode::UNAVAILABLE ||
      status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) {
    return std::nullopt;
  }
  throw CommandFailed(1, absl::StrCat("GatewayService.ListModels at ", gateway_address, " failed: ",
                                      status.error_message()));
}

void PrintServed(const ServeOptions& options, const std::string& name, const std::string& model,
                 const flotilla::v1::ServedModel& served, const MeshState& mesh, const std::vector<MeshWorker>& workers) {
  const std::string gateway_grpc = ServiceAddress(mesh, "gateway", /*http=*/false);
  const std::string base_url = absl::StrCat("http://", ServiceAddress(mesh, "gateway", /*http=*/true), "/v1");
  std::string example;
  if (served.task() == "embed") {
    example = absl::StrCat("curl ", base_url, "/embeddings -H 'Content-Type: application/json' -d '{\"model\": \"",
                           name, "\", \"input\": \"Hello!\"}'");
  } else if (served.task() != "classify") {
    example = absl::StrCat("curl ", base_url,
                           "/chat/completions -H 'Content-Type: application/json' -d '{\"model\": \"", name,
                           "\", \"messages\": [{\"role\": \"user\", \"content\": \"Hello!\"}]}'");
  }
  if (options.as_json) {
    nlohmann::json replicas = nlohmann::json::array();
    for (const MeshWorker& worker : workers) {
      replicas.push_back({{"replica", worker.replica}, {"pid", worker.pid}, {"grpc_address", worker.grpc_address},
                          {"http_address", worker.http_address}, {"log", worker.log_path}});
    }
    const nlohmann::json document = {{"name", name},
                                     {"model", model},
                                     {"task", served.task()},
                                     {"replicas", served.replicas()},
                                     {"openai_base_url", base_url},
                                     {"grpc_address", gateway_grpc},
                                     {"workers", replicas}};
    std::printf("%s\n", document.dump(2).c_str());
    return;
  }
  std::printf("flotilla: serving %s (%d %s of %s%s)\n", name.c_str(), served.replicas(),
              served.replicas() == 1 ? "replica" : "replicas", model.c_str(),
              served.task().empty() ? "" : absl::StrCat(", task ", served.task()).c_str());
  std::printf("  OpenAI API  %s\n", base_url.c_str());
  std::printf("  gRPC        %s (flotilla.v1.GatewayService)\n", gateway_grpc.c_str());
  if (!example.empty()) std::printf("  try         %s\n", example.c_str());
  if (served.task() != "embed" && served.task() != "classify") {
    std::printf("              flotilla chat %s \"Hello!\"\n", name.c_str());
  }
}

void Unserve(const std::string& data_directory, const std::string& name, int timeout_seconds) {
  const std::string operation = absl::StrCat("unserve ", name);
  const MeshState mesh = LoadMeshOrFail(operation, data_directory);
  std::set<int> recorded;
  std::vector<int> alive;
  for (const MeshWorker& worker : mesh.workers) {
    if (worker.name != name) continue;
    recorded.insert(worker.pid);
    if (IsFlotillaProcess(worker.pid)) alive.push_back(worker.pid);
  }
  if (recorded.empty()) {
    const std::vector<std::string> served = ServedNames(mesh);
    throw CommandFailed(3, absl::StrCat(operation, ": no model named ", name, " is served (served: ",
                                        served.empty() ? "none" : absl::StrJoin(served, ", "), ")"));
  }
  StopProcesses(alive, std::chrono::seconds(timeout_seconds));
  ForgetWorkers(data_directory, recorded);
  std::printf("flotilla: stopped %zu %s of %s\n", alive.size(), alive.size() == 1 ? "worker" : "workers", name.c_str());
}

}  // namespace

void ServeModel(const ServeOptions& options) {
  const std::string operation = absl::StrCat("serve ", options.model);
  const std::string model = ResolveModel(options.model);
  const std::string name = options.name.empty() ? registry::DefaultServedModelName(options.model) : options.name;
  if (absl::Status valid = registry::ValidateRepositoryPart(name, "served model name"); !valid.ok()) {
    throw CommandFailed(2, absl::StrCat(operation, ": ", valid.message(), " (pass --name NAME)"));
  }
  const MeshState initial = LoadMeshOrFail(operation, options.data_directory);
  const std::string gateway_address = ServiceAddress(initial, "gateway", /*http=*/false);
  const std::string registry_address = ServiceAddress(initial, "registry", /*http=*/false);
  if (gateway_address.empty() || registry_address.empty()) {
    throw CommandFailed(1, absl::StrCat(operation, ": the mesh in ", options.data_directory,
                                        " has no gateway or no registry (restart it: `flotilla down`, `flotilla up`)"));
  }
  const fs::path binary = ExecutableDirectory() / "flotilla-worker";
  if (!fs::exists(binary)) {
    throw CommandFailed(1, absl::StrCat(operation, ": cannot find ", binary.string(),
                                        " (build it: it needs LibTorch, FLOTILLA_WITH_TORCH=ON)"));
  }

  // A registry model is pulled once, here, into the cache every worker reads (--cache_dir): the
  // replicas then find each file complete instead of downloading it side by side.
  if (options.replicas > 1 && !fs::is_directory(options.model)) {
    LocalModelFolder(options.model, registry_address, options.data_directory, /*weights=*/true);
  }

  // Start the workers and record them before waiting: `status` shows them while they load, and a
  // `down` meanwhile stops them.
  std::vector<MeshWorker> workers;
  {
    MeshLock lock(options.data_directory, MeshLock::Mode::kWait);
    MeshState mesh = LoadMeshOrFail(operation, options.data_directory);
    for (const MeshWorker& worker : mesh.workers) {
      if (worker.name == name && IsFlotillaProcess(worker.pid)) {
        throw CommandFailed(4, absl::StrCat(operation, ": ", name, " is already served (", worker.model,
                                            "); `flotilla unserve ", name, "` first, or pass another --name"));
      }
    }
    std::erase_if(mesh.workers, [&](const MeshWorker& worker) { return worker.name == name; });  // the dead ones
    std::error_code error;
    fs::create_directories(fs::path(options.data_directory) / "logs", error);
    for (int replica = 0; replica < options.replicas; ++replica) {
      const std::string stem = WorkerStem(name, replica);
      const fs::path ready_file = RunDirectory(options.data_directory) / (stem + ".ready");
      fs::remove(ready_file, error);
      std::vector<std::string> arguments = {
          "--grpc_listen=127.0.0.1:0",
          "--http_listen=127.0.0.1:0",
          absl::StrCat("--data_dir=", (fs::path(options.data_directory) / stem).string()),
          absl::StrCat("--ready_file=", ready_file.string()),
          absl::StrCat("--model=", model),
          absl::StrCat("--served_model_name=", name),
          absl::StrCat("--replica=", replica),
          absl::StrCat("--gateways=", gateway_address),
          absl::StrCat("--registry=", registry_address),
          // One model cache for the CLI and every worker: a commit is pulled once per machine.
          absl::StrCat("--cache_dir=", ModelCacheDirectory(options.data_directory))};
      if (options.tensor_parallel_size > 1) {
        arguments.push_back(absl::StrCat("--tensor_parallel_size=", options.tensor_parallel_size));
      }
      if (!options.tp_plan.empty()) {
        arguments.push_back(absl::StrCat("--tp_plan=", fs::absolute(options.tp_plan).string()));
      }
      if (!options.dtype.empty()) arguments.push_back(absl::StrCat("--dtype=", options.dtype));
      if (!options.attention.empty()) arguments.push_back(absl::StrCat("--attention=", options.attention));
      if (!options.kernels.empty()) arguments.push_back(absl::StrCat("--kernels=", options.kernels));
      if (!options.device.empty()) arguments.push_back(absl::StrCat("--device=", options.device));
      if (options.task != "auto") arguments.push_back(absl::StrCat("--task=", options.task));
      if (options.kv_cache_memory > 0) arguments.push_back(absl::StrCat("--kv_cache_memory=", options.kv_cache_memory));
      if (options.max_model_len > 0) arguments.push_back(absl::StrCat("--max_model_len=", options.max_model_len));
      if (options.max_num_batched_tokens > 0) {
        arguments.push_back(absl::StrCat("--max_num_batched_tokens=", options.max_num_batched_tokens));
      }
      if (options.max_num_seqs > 0) arguments.push_back(absl::StrCat("--max_num_seqs=", options.max_num_seqs));
      MeshWorker worker;
      worker.name = name;
      worker.model = model;
      worker.replica = replica;
      worker.log_path = (fs::path(options.data_directory) / "logs" / (stem + ".log")).string();
      worker.pid = SpawnDetached(binary, arguments, worker.log_path);
      workers.push_back(worker);
      mesh.workers.push_back(worker);
    }
    if (absl::Status saved = SaveMeshState(mesh); !saved.ok()) {
      std::vector<int> pids;
      for (const MeshWorker& worker : workers) pids.push_back(worker.pid);
      StopProcesses(pids, std::chrono::seconds(10));
      throw CommandFailed(1, absl::StrCat(operation, ": ", saved.message()));
    }
  }

  std::set<int> pids;
  for (const MeshWorker& worker : workers) pids.insert(worker.pid);
  const auto fail = [&](const std::string& message) {
    StopProcesses({pids.begin(), pids.end()}, std::chrono::seconds(10));
    ForgetWorkers(options.data_directory, pids);
    throw CommandFailed(1, absl::StrCat(operation, ": ", message));
  };

  auto gateway = flotilla::v1::GatewayService::NewStub(
      grpc::CreateChannel(gateway_address, grpc::InsecureChannelCredentials()));
  const auto deadline = Clock::now() + std::chrono::seconds(options.timeout_seconds);
  flotilla::v1::ServedModel served;
  while (true) {
    bool all_ready = true;
    for (MeshWorker& worker : workers) {
      if (ChildHasExited(worker.pid)) {
        fail(absl::StrCat("worker ", worker.replica, " of ", name, " exited during start-up (log: ", worker.log_path,
                          "):\n", LastLines(worker.log_path, 10)));
      }
      if (worker.grpc_address.empty()) {
        std::ifstream stream(RunDirectory(options.data_directory) / (WorkerStem(name, worker.replica) + ".ready"));
        const nlohmann::json ready = nlohmann::json::parse(stream, nullptr, /*allow_exceptions=*/false);
        if (ready.is_object()) {
          worker.grpc_address = ready.value("grpc_address", "");
          worker.http_address = ready.value("http_address", "");
        }
      }
      all_ready = all_ready && !worker.grpc_address.empty();
    }
    if (all_ready) {
      std::optional<flotilla::v1::ListModelsResponse> listed;
      try {
        listed = ListServedModels(*gateway, gateway_address);
      } catch (const CommandFailed& failure) {
        fail(failure.what());
      }
      if (listed) {
        for (const flotilla::v1::ServedModel& entry : listed->models()) {
          if (entry.name() == name) served = entry;
        }
        if (served.replicas() >= options.replicas) break;
      }
    }
    if (Clock::now() > deadline) {
      fail(absl::StrCat("the gateway did not list ", name, " with ", options.replicas, " replicas within ",
                        options.timeout_seconds, "s (it lists ", served.replicas(), "; logs: ",
                        (fs::path(options.data_directory) / "logs").string(), "/", WorkerStem(name, 0), ".log...)"));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }

  // Record the addresses the ready files gave.
  MeshState mesh;
  {
    MeshLock lock(options.data_directory, MeshLock::Mode::kWait);
    mesh = LoadMeshOrFail(operation, options.data_directory);
    for (MeshWorker& recorded : mesh.workers) {
      for (const MeshWorker& worker : workers) {
        if (recorded.pid == worker.pid) recorded = worker;
      }
    }
    if (absl::Status saved = SaveMeshState(mesh); !saved.ok()) fail(std::string(saved.message()));
  }
  PrintServed(options, name, model, served, mesh, workers);
}

void AddServeCommands(CLI::App& app) {
  auto options = std::make_shared<ServeOptions>();
  options->data_directory = DefaultDataDirectory();
  CLI::App* serve = app.add_subcommand(
      "serve", "Serve a model on the local mesh: start its workers, wait until the gateway lists it");
  serve->add_option("model", options->model, "A registry reference namespace/name[@revision] or a local folder")
      ->required();
  serve->add_option("--name", options->name,
                    "The served model name clients ask for (default: the repository's name, lowercase)");
  serve->add_option("--replicas", options->replicas, "Worker processes (replicas) to start")
      ->check(CLI::Range(1, 64));
  serve->add_option("--tensor-parallel-size", options->tensor_parallel_size,
                    "Processes (ranks) per replica, each holding 1/N of the weights; a replica's agent restarts "
                    "all of them when one dies")
      ->check(CLI::Range(1, 64));
  serve->add_option("--tp-plan", options->tp_plan,
                    "A JSON tensor-parallel plan (base_model_tp_plan's format) overriding the model's")
      ->check(CLI::ExistingFile);
  serve->add_option("--dtype", options->dtype, "Weights and activations (default: the worker's)")
      ->check(CLI::IsMember({"float32", "bfloat16"}));
  serve->add_option("--attention", options->attention, "Attention implementation (default: the worker's)")
      ->check(CLI::IsMember({"sdpa", "paged", "eager"}));
  serve->add_option("--kernels", options->kernels,
                    "Kernel mapping Name=eager|builtin|namespace/name[@revision],... for RMSNorm, SiluAndMul, "
                    "RotaryEmbedding, PagedAttention (default: the worker's)");
  serve->add_option("--device", options->device,
                    "cpu, cuda (rank r of each replica on GPU r, collectives over NCCL) or cuda:N (default: cpu)");
  serve->add_option("--kv-cache-memory", options->kv_cache_memory, "Bytes of KV cache per worker (default: the worker's)")
      ->check(CLI::PositiveNumber);
  serve->add_option("--max-model-len", options->max_model_len, "Longest sequence, prompt and output (default: the model's)")
      ->check(CLI::PositiveNumber);
  serve->add_option("--max-num-batched-tokens", options->max_num_batched_tokens, "Token budget of one step")
      ->check(CLI::PositiveNumber);
  serve->add_option("--max-num-seqs", options->max_num_seqs, "Most sequences running at once")
      ->check(CLI::PositiveNumber);
  serve->add_option("--task", options->task, "What to serve; auto picks by the model's architecture")
      ->check(CLI::IsMember({"auto", "generate", "embed", "classify"}))
      ->default_str("auto");
  serve->add_option("--timeout", options->timeout_seconds,
                    "Seconds to wait until the gateway lists every replica (loading included)")
      ->check(CLI::PositiveNumber)
      ->default_str("600");
  serve->add_option("--data-dir", options->data_directory, "The mesh's data directory");
  serve->add_flag("--json", options->as_json, "Print JSON for scripts");
  serve->callback([options] { ServeModel(*options); });

  auto data_directory = std::make_shared<std::string>(DefaultDataDirectory());
  auto name = std::make_shared<std::string>();
  auto timeout = std::make_shared<int>(30);
  CLI::App* unserve = app.add_subcommand(
      "unserve", "Stop serving a model: its workers drain (SIGTERM), SIGKILL after --timeout");
  unserve->add_option("name", *name, "The served model name (`flotilla status` lists them)")->required();
  unserve->add_option("--timeout", *timeout, "Seconds each worker may drain")->check(CLI::PositiveNumber);
  unserve->add_option("--data-dir", *data_directory, "The mesh's data directory");
  unserve->callback([=] { Unserve(*data_directory, *name, *timeout); });
}

}  // namespace flotilla::cli
