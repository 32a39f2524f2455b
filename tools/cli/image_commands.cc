// flotilla process-image: images to pixel_values with a model's preprocessor_config.json, the same
// tensors transformers' fast image processor computes, written as safetensors.
#include <dlfcn.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include <absl/strings/str_cat.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "services/preprocess/image/image_processor.h"
#include "services/preprocess/image/safetensors_writer.h"
#include "tools/cli/commands.h"
#include "tools/cli/torch_commands.h"

namespace flotilla::cli {
namespace {

namespace fs = std::filesystem;

struct ProcessImageOptions {
  std::string model;
  std::vector<std::string> images;
  std::string output = "pixel_values.safetensors";
  std::string device = "cpu";
  int threads = 0;
  int iterations = 0;
  bool decode_only = false;
  int64_t max_pixels = image::DecodeOptions{}.max_pixels;
  ModelSourceFlags model_source;
};

std::string ReadFileBytes(const std::string& path) {
  std::ifstream stream(path, std::ios::binary);
  if (!stream) throw CommandFailed(2, absl::StrCat("process-image: cannot read image ", path));
  std::ostringstream bytes;
  bytes << stream.rdbuf();
  return std::move(bytes).str();
}

// The CLI does not link LibTorch's CUDA half (CPU commands should not load it); `--device cuda`
// loads it, which registers ATen's CUDA hooks, before any tensor is placed on the GPU.
void LoadCudaFor(const torch::Device& device) {
  if (!device.is_cuda() || at::hasCUDA()) return;
  if (dlopen("libtorch_cuda.so", RTLD_NOW | RTLD_GLOBAL) == nullptr) {
    const char* error = dlerror();
    throw CommandFailed(1, absl::StrCat("process-image: --device ", device.str(), ": cannot load libtorch_cuda.so (",
                                        error != nullptr ? error : "unknown error", ")"));
  }
  if (!at::hasCUDA()) {
    throw CommandFailed(1, absl::StrCat("process-image: --device ", device.str(), ": no CUDA device is visible"));
  }
}

void RunProcessImage(const ProcessImageOptions& options) {
  const fs::path model(LocalModelFolder(options.model, options.model_source.registry,
                                       options.model_source.data_directory, /*weights=*/false));
  absl::StatusOr<image::ImageProcessor> processor = image::ImageProcessor::FromDirectory(model.string());
  if (!processor.ok()) throw CommandFailed(1, std::string(processor.status().message()));
  if (options.threads > 0) at::set_num_threads(options.threads);
  std::vector<std::string> encoded;
  for (const std::string& path : options.images) encoded.push_back(ReadFileBytes(path));
  torch::Device device(options.device);
  LoadCudaFor(device);
  image::DecodeOptions decode_options;
  decode_options.max_pixels = options.max_pixels;

  auto run = [&] {
    absl::StatusOr<image::ProcessedImages> processed = processor->ProcessEncoded(encoded, device, decode_options);
    if (!processed.ok()) throw CommandFailed(1, absl::StrCat("process-image: ", processed.status().message()));
    return *std::move(processed);
  };
  image::ProcessedImages processed = run();
  nlohmann::json summary = {{"pixel_values", processed.pixel_values.sizes().vec()}};
  if (options.iterations > 0) {
    // Timing for tools/bench: decode + process of the whole batch, files already in memory; or,
    // with --decode-only, the decoding alone: the ceiling the exact decoders set on images/s.
    const auto start = std::chrono::steady_clock::now();
    for (int iteration = 0; iteration < options.iterations; ++iteration) {
      if (!options.decode_only) {
        processed = run();
      } else if (absl::Status decoded = image::DecodeImages(encoded, decode_options).status(); !decoded.ok()) {
        throw CommandFailed(1, absl::StrCat("process-image: ", decoded.message()));
      }
    }
    if (device.is_cuda()) processed.pixel_values.cpu();
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    summary["seconds_per_batch"] = seconds / options.iterations;
    summary["images_per_second"] = static_cast<double>(encoded.size()) * options.iterations / seconds;
    summary["threads"] = at::get_num_threads();
    summary["timed"] = options.decode_only ? "decode" : "decode+process";
  }
  std::vector<std::pair<std::string, torch::Tensor>> tensors = {{"pixel_values", processed.pixel_values}};
  if (processed.image_grid_thw.defined()) {
    tensors.emplace_back("image_grid_thw", processed.image_grid_thw);
    summary["image_grid_thw"] = processed.image_grid_thw.sizes().vec();
  }
  if (absl::Status status = image::WriteSafetensors(options.output, tensors); !status.ok()) {
    throw CommandFailed(1, std::string(status.message()));
  }
  summary["output"] = options.output;
  std::cout << summary.dump() << std::endl;
}

}  // namespace

void AddImageCommands(CLI::App& app) {
  auto options = std::make_shared<ProcessImageOptions>();
  CLI::App* command = app.add_subcommand("process-image", TorchCommandDescription("process-image"));
  command->add_option("model", options->model, "Folder holding preprocessor_config.json (or processor_config.json), or namespace/name[@revision]")
      ->required();
  AddModelSourceFlags(command, options->model_source);
  command->add_option("images", options->images, "JPEG, PNG or WebP files")->required();
  command->add_option("--output,-o", options->output, "safetensors file to write (pixel_values, image_grid_thw)")
      ->capture_default_str();
  command->add_option("--device", options->device, "cpu or cuda[:N]")->capture_default_str();
  command->add_option("--threads", options->threads, "ATen intra-op threads (0: LibTorch's default)");
  command->add_option("--max-pixels", options->max_pixels, "Refuse images declaring more pixels")
      ->capture_default_str();
  command->add_option("--iterations", options->iterations,
                      "Also time this many decode+process runs and report images/s (benchmarks)");
  command->add_flag("--decode-only", options->decode_only,
                    "With --iterations: time the decoding alone (the ceiling it sets on images/s)");
  command->callback([options] { RunProcessImage(*options); });
}

}  // namespace flotilla::cli
