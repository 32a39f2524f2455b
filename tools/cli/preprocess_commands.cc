// tokenize, detokenize: the tokenizer library from the command line, on a local directory holding
// a tokenizer.json, or through a preprocess service (--server) with a registry reference.
//
//   flotilla tokenize ./SmolLM2 --text "Hello world" [--pair TEXT] [--no-special-tokens]
//     {"ids": [...], "tokens": [...], "offsets": [[start, end], ...]}   (character offsets, as tokenizers)
//   flotilla detokenize ./SmolLM2 --ids 19556,905 [--skip-special-tokens]
//   flotilla tokenize acme/smollm2@main --server 127.0.0.1:7702 --text "Hello world"
//     (with --server, SOURCE is a registry reference, or a folder on the server's machine when the
//     service allows local paths; the output is the same)
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <nlohmann/json.hpp>

#include "flotilla/v1/preprocess.grpc.pb.h"
#include "services/preprocess/tokenizer/tokenizer.h"
#include "services/registry/names.h"
#include "tools/cli/commands.h"

namespace flotilla::cli {
namespace {

std::unique_ptr<tokenizer::Tokenizer> LoadTokenizer(const std::string& source) {
  auto loaded = tokenizer::Tokenizer::FromDirectory(source);
  if (!loaded.ok()) throw CommandFailed(1, std::string(loaded.status().message()));
  return std::move(*loaded);
}

std::vector<uint32_t> ParseIds(const std::string& text) {
  std::vector<uint32_t> ids;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find(',', start);
    if (end == std::string::npos) end = text.size();
    std::string piece = text.substr(start, end - start);
    try {
      size_t used = 0;
      unsigned long value = std::stoul(piece, &used);
      if (used != piece.size() || value > 0xFFFFFFFFul) throw std::invalid_argument(piece);
      ids.push_back(static_cast<uint32_t>(value));
    } catch (const std::exception&) {
      throw CommandFailed(2, "detokenize: --ids: expected comma-separated non-negative integers but got \"" + piece + "\"");
    }
    start = end + 1;
  }
  return ids;
}

// SOURCE as the service's ModelReference: an existing folder is sent as local_path (the service
// must allow it), anything else must parse as namespace/name[@revision].
flotilla::v1::ModelReference ServiceReference(const std::string& command, const std::string& source) {
  flotilla::v1::ModelReference reference;
  std::error_code error;
  if (std::filesystem::is_directory(source, error)) {
    reference.set_local_path(std::filesystem::absolute(source).string());
    return reference;
  }
  auto parsed = registry::ParseReference(source);
  if (!parsed.ok()) {
    throw CommandFailed(2, command + ": " + source + " is neither a folder nor a registry reference: " +
                               std::string(parsed.status().message()));
  }
  reference.set_namespace_(parsed->namespace_name);
  reference.set_name(parsed->name);
  reference.set_revision(parsed->revision);
  return reference;
}

std::unique_ptr<flotilla::v1::PreprocessService::Stub> ServiceStub(const std::string& address) {
  return flotilla::v1::PreprocessService::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
}

void CheckCall(const std::string& command, const std::string& address, const grpc::Status& status) {
  if (!status.ok()) {
    throw CommandFailed(1, command + ": preprocess service at " + address + " answered " +
                               std::to_string(static_cast<int>(status.error_code())) + ": " + status.error_message());
  }
}

// Byte offsets into `text` as character (code point) offsets, as Python's tokenizers reports them.
uint32_t CharOffset(const std::string& text, int32_t byte_offset) {
  uint32_t characters = 0;
  for (int32_t i = 0; i < byte_offset && i < static_cast<int32_t>(text.size()); ++i) {
    if ((static_cast<unsigned char>(text[i]) & 0xC0) != 0x80) ++characters;
  }
  return characters;
}

}  // namespace

void AddPreprocessCommands(CLI::App& app) {
  struct TokenizeOptions {
    std::string source, text, pair, server;
    bool no_special_tokens = false;
    ModelSourceFlags model_source;
  };
  auto tokenize_options = std::make_shared<TokenizeOptions>();
  CLI::App* tokenize = app.add_subcommand("tokenize", "Encode text with a tokenizer.json; prints JSON ids, tokens, offsets.");
  tokenize->add_option("source", tokenize_options->source, "Folder holding tokenizer.json, or namespace/name[@revision]")->required();
  AddModelSourceFlags(tokenize, tokenize_options->model_source);
  tokenize->add_option("--text", tokenize_options->text, "Text to encode")->required();
  tokenize->add_option("--pair", tokenize_options->pair, "Second sequence of a pair");
  tokenize->add_flag("--no-special-tokens", tokenize_options->no_special_tokens, "Do not add the post-processor's special tokens");
  tokenize->add_option("--server", tokenize_options->server,
                       "Call the preprocess service at host:port (SOURCE is then a registry reference)");
  tokenize->callback([tokenize_options, tokenize] {
    if (!tokenize_options->server.empty()) {
      if (tokenize->count("--pair") > 0) {
        // The service's offsets do not say which sequence of a pair a token came from, so they
        // cannot be turned into per-sequence character offsets here.
        throw CommandFailed(2, "tokenize: --pair is not supported with --server; run it on a local folder");
      }
      flotilla::v1::TokenizeRequest request;
      *request.mutable_model() = ServiceReference("tokenize", tokenize_options->source);
      request.add_texts(tokenize_options->text);
      request.set_add_special_tokens(!tokenize_options->no_special_tokens);
      flotilla::v1::TokenizeResponse response;
      grpc::ClientContext context;
      CheckCall("tokenize", tokenize_options->server,
                ServiceStub(tokenize_options->server)->Tokenize(&context, request, &response));
      if (response.encodings_size() != 1) throw CommandFailed(1, "tokenize: the service returned no encoding");
      const flotilla::v1::Encoding& encoding = response.encodings(0);
      nlohmann::json offsets = nlohmann::json::array();
      for (int i = 0; i + 1 < encoding.offsets_size(); i += 2) {
        offsets.push_back({CharOffset(tokenize_options->text, encoding.offsets(i)),
                           CharOffset(tokenize_options->text, encoding.offsets(i + 1))});
      }
      nlohmann::json output{{"ids", std::vector<int32_t>(encoding.ids().begin(), encoding.ids().end())},
                            {"tokens", std::vector<std::string>(encoding.tokens().begin(), encoding.tokens().end())},
                            {"offsets", offsets}};
      std::printf("%s\n", output.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
      return;
    }
    auto tokenizer = LoadTokenizer(LocalModelFolder(tokenize_options->source, tokenize_options->model_source.registry,
                                                    tokenize_options->model_source.data_directory, /*weights=*/false));
    tokenizer::EncodeOptions options;
    options.add_special_tokens = !tokenize_options->no_special_tokens;
    options.offset_type = tokenizer::OffsetType::kChar;
    auto encoding = tokenize->count("--pair") > 0
                        ? tokenizer->EncodePair(tokenize_options->text, tokenize_options->pair, options)
                        : tokenizer->Encode(tokenize_options->text, options);
    if (!encoding.ok()) throw CommandFailed(1, "tokenize: " + std::string(encoding.status().message()));
    nlohmann::json offsets = nlohmann::json::array();
    for (const auto& offset : encoding->offsets) offsets.push_back({offset.start, offset.end});
    nlohmann::json output{{"ids", encoding->ids}, {"tokens", encoding->tokens}, {"offsets", offsets}};
    std::printf("%s\n", output.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
  });

  struct DetokenizeOptions {
    std::string source, ids, server;
    bool skip_special_tokens = false;
    ModelSourceFlags model_source;
  };
  auto detokenize_options = std::make_shared<DetokenizeOptions>();
  CLI::App* detokenize = app.add_subcommand("detokenize", "Decode token ids with a tokenizer.json; prints the text.");
  detokenize->add_option("source", detokenize_options->source, "Folder holding tokenizer.json, or namespace/name[@revision]")->required();
  AddModelSourceFlags(detokenize, detokenize_options->model_source);
  detokenize->add_option("--ids", detokenize_options->ids, "Comma-separated token ids")->required();
  detokenize->add_flag("--skip-special-tokens", detokenize_options->skip_special_tokens, "Leave special tokens out");
  detokenize->add_option("--server", detokenize_options->server,
                         "Call the preprocess service at host:port (SOURCE is then a registry reference)");
  detokenize->callback([detokenize_options] {
    if (!detokenize_options->server.empty()) {
      flotilla::v1::DetokenizeRequest request;
      *request.mutable_model() = ServiceReference("detokenize", detokenize_options->source);
      for (uint32_t id : ParseIds(detokenize_options->ids)) request.add_ids(static_cast<int32_t>(id));
      request.set_skip_special_tokens(detokenize_options->skip_special_tokens);
      flotilla::v1::DetokenizeResponse response;
      grpc::ClientContext context;
      CheckCall("detokenize", detokenize_options->server,
                ServiceStub(detokenize_options->server)->Detokenize(&context, request, &response));
      std::printf("%s\n", response.text().c_str());
      return;
    }
    auto tokenizer = LoadTokenizer(LocalModelFolder(detokenize_options->source, detokenize_options->model_source.registry,
                                                    detokenize_options->model_source.data_directory, /*weights=*/false));
    auto text = tokenizer->Decode(ParseIds(detokenize_options->ids), detokenize_options->skip_special_tokens);
    if (!text.ok()) throw CommandFailed(1, "detokenize: " + std::string(text.status().message()));
    std::printf("%s\n", text->c_str());
  });
}

}  // namespace flotilla::cli
