// flotilla-tokenizer-tool: the tokenizer library driven from files, for the Python comparison
// tests and the encode benchmark.
//
//   flotilla-tokenizer-tool jsonl DIR < requests.jsonl > results.jsonl
//     one JSON request per line: {"op": "encode", "text": ..., "pair": ..., "add_special_tokens": true,
//     "offsets": "char"|"byte"}, {"op": "encode_hex", "hex": "..."} (raw bytes),
//     {"op": "encode_batch", "texts": [...]}, {"op": "decode", "ids": [...], "skip_special_tokens": false},
//     {"op": "stream", "ids": [...], "skip_special_tokens": false}; one JSON answer per line.
//   flotilla-tokenizer-tool bench DIR CORPUS --threads N
//     CORPUS holds texts separated by NUL bytes; times only the encode calls and prints JSON.
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/strings/escaping.h"
#include "services/preprocess/tokenizer/thread_pool.h"
#include "services/preprocess/tokenizer/tokenizer.h"

namespace {

using flotilla::tokenizer::Encoding;
using flotilla::tokenizer::EncodeOptions;
using flotilla::tokenizer::OffsetType;
using flotilla::tokenizer::Tokenizer;
using Json = nlohmann::json;

Json EncodingToJson(const Encoding& encoding) {
  Json offsets = Json::array();
  for (const auto& offset : encoding.offsets) offsets.push_back({offset.start, offset.end});
  return Json{{"ids", encoding.ids},
              {"tokens", encoding.tokens},
              {"offsets", offsets},
              {"type_ids", encoding.type_ids},
              {"special_tokens_mask", encoding.special_tokens_mask},
              {"attention_mask", encoding.attention_mask}};
}

Json Answer(const Tokenizer& tokenizer, const Json& request) {
  std::string op = request.value("op", "encode");
  EncodeOptions options;
  options.add_special_tokens = request.value("add_special_tokens", true);
  options.offset_type = request.value("offsets", "char") == "byte" ? OffsetType::kByte : OffsetType::kChar;
  if (op == "encode" || op == "encode_hex") {
    std::string text;
    if (op == "encode_hex") {
      text = absl::HexStringToBytes(request.value("hex", ""));
    } else {
      text = request.value("text", "");
    }
    auto encoding = request.contains("pair") && !request["pair"].is_null()
                        ? tokenizer.EncodePair(text, request["pair"].get<std::string>(), options)
                        : tokenizer.Encode(text, options);
    if (!encoding.ok()) return Json{{"error", std::string(encoding.status().message())}};
    return EncodingToJson(*encoding);
  }
  if (op == "encode_batch") {
    std::vector<std::string> texts = request.value("texts", std::vector<std::string>{});
    std::vector<std::string_view> views(texts.begin(), texts.end());
    auto encodings = tokenizer.EncodeBatch(views, options);
    if (!encodings.ok()) return Json{{"error", std::string(encodings.status().message())}};
    Json list = Json::array();
    for (const auto& encoding : *encodings) list.push_back(EncodingToJson(encoding));
    return Json{{"encodings", list}};
  }
  std::vector<uint32_t> ids = request.value("ids", std::vector<uint32_t>{});
  bool skip = request.value("skip_special_tokens", false);
  if (op == "decode") {
    auto text = tokenizer.Decode(ids, skip);
    if (!text.ok()) return Json{{"error", std::string(text.status().message())}};
    return Json{{"text", *text}};
  }
  if (op == "stream") {
    flotilla::tokenizer::IncrementalDecoder stream(tokenizer, skip);
    Json pieces = Json::array();
    for (uint32_t id : ids) {
      auto piece = stream.Step(id);
      if (!piece.ok()) return Json{{"error", std::string(piece.status().message())}};
      pieces.push_back(*piece);
    }
    return Json{{"pieces", pieces}};
  }
  return Json{{"error", "unknown op " + op}};
}

int RunJsonLines(const Tokenizer& tokenizer) {
  std::string line;
  while (std::getline(std::cin, line)) {
    if (line.empty()) continue;
    Json request = Json::parse(line, nullptr, false);
    Json answer = request.is_discarded() ? Json{{"error", "request is not JSON"}} : Answer(tokenizer, request);
    std::cout << answer.dump(-1, ' ', false, Json::error_handler_t::replace) << "\n";
    std::cout.flush();
  }
  return 0;
}

int RunBench(const Tokenizer& tokenizer, const std::string& corpus_path, size_t threads) {
  std::ifstream file(corpus_path, std::ios::binary);
  if (!file) {
    std::fprintf(stderr, "bench: cannot open %s\n", corpus_path.c_str());
    return 1;
  }
  std::stringstream contents;
  contents << file.rdbuf();
  std::string corpus = contents.str();
  std::vector<std::string_view> texts;
  size_t start = 0;
  while (start < corpus.size()) {
    size_t end = corpus.find('\0', start);
    if (end == std::string::npos) end = corpus.size();
    texts.push_back(std::string_view(corpus).substr(start, end - start));
    start = end + 1;
  }
  EncodeOptions options;
  options.offset_type = OffsetType::kChar;  // what Python's encode computes too
  size_t tokens = 0;
  auto begin = std::chrono::steady_clock::now();
  if (threads <= 1) {
    for (auto text : texts) {
      auto encoding = tokenizer.Encode(text, options);
      if (!encoding.ok()) {
        std::fprintf(stderr, "bench: %s\n", std::string(encoding.status().message()).c_str());
        return 1;
      }
      tokens += encoding->size();
    }
  } else {
    auto encodings = tokenizer.EncodeBatch(texts, options);
    if (!encodings.ok()) {
      std::fprintf(stderr, "bench: %s\n", std::string(encodings.status().message()).c_str());
      return 1;
    }
    for (const auto& encoding : *encodings) tokens += encoding.size();
  }
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - begin).count();
  std::cout << Json{{"seconds", seconds}, {"tokens", tokens}, {"bytes", corpus.size()},
                    {"texts", texts.size()}, {"threads", threads <= 1 ? 1 : flotilla::tokenizer::ThreadPool::Shared().size()}}
                   .dump()
            << "\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s jsonl DIR | bench DIR CORPUS [--threads N]\n", argv[0]);
    return 2;
  }
  std::string mode = argv[1];
  auto tokenizer = Tokenizer::FromDirectory(argv[2]);
  if (!tokenizer.ok()) {
    std::fprintf(stderr, "%s\n", std::string(tokenizer.status().message()).c_str());
    return 1;
  }
  if (mode == "jsonl") return RunJsonLines(**tokenizer);
  if (mode == "bench" && argc >= 4) {
    size_t threads = 1;
    for (int i = 4; i + 1 < argc; ++i) {
      if (std::string(argv[i]) == "--threads") threads = std::stoul(argv[i + 1]);
    }
    return RunBench(**tokenizer, argv[3], threads);
  }
  std::fprintf(stderr, "unknown mode %s\n", mode.c_str());
  return 2;
}
