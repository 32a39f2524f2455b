// The stages of a tokenizer pipeline, one interface each, as in the Rust `tokenizers` library:
// Normalizer -> PreTokenizer -> Model -> PostProcessor, and a Decoder for the way back. Each
// concrete stage is built from its tokenizer.json object by the *FromJson functions at the bottom
// (components.cc holds every implementation, grouped by stage). To add one more stage type: write
// the class in components.cc next to its siblings and add its "type" to the matching *FromJson.
//
// All stages are immutable after construction and safe to call from many threads at once (the BPE
// word cache is internally locked).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "services/preprocess/tokenizer/normalized_string.h"

namespace flotilla::tokenizer {

// Heterogeneous hashing so maps keyed by std::string can be probed with a std::string_view (the
// Debian Abseil build has its own string_view type).
struct StringViewHash {
  using is_transparent = void;
  size_t operator()(std::string_view text) const { return std::hash<std::string_view>()(text); }
};
struct StringViewEqual {
  using is_transparent = void;
  bool operator()(std::string_view left, std::string_view right) const { return left == right; }
};

// One token produced by a model (or an added token matched in the text); offsets are byte offsets
// into the normalized piece the model saw.
struct Token {
  uint32_t id;
  std::string value;
  Offsets offsets;
};

// A piece of the input on its way through the pipeline; `tokenized` once a model or the added
// vocabulary has produced its tokens.
struct Split {
  NormalizedString normalized;
  std::vector<Token> tokens;
  bool tokenized = false;
};

// The input cut into pieces (tokenizers' PreTokenizedString).
struct PreTokenizedString {
  std::vector<Split> splits;

  // Replaces every piece not yet tokenized by the pieces `split_function` appends; empty pieces are
  // dropped.
  template <typename SplitFunction>
  void SplitEach(SplitFunction&& split_function) {
    std::vector<Split> new_splits;
    new_splits.reserve(splits.size() * 2);
    std::vector<NormalizedString> pieces;
    for (size_t index = 0; index < splits.size(); ++index) {
      Split& split = splits[index];
      if (split.tokenized) {
        new_splits.push_back(std::move(split));
        continue;
      }
      pieces.clear();
      split_function(index, split.normalized, pieces);
      for (auto& piece : pieces) {
        if (piece.empty()) continue;
        new_splits.push_back(Split{std::move(piece), {}, false});
      }
    }
    splits = std::move(new_splits);
  }
};

// The per-sequence result. Offsets are byte offsets into the text unless the encode call asked for
// character offsets (what Python's `tokenizers` reports).
struct Encoding {
  std::vector<uint32_t> ids;
  std::vector<uint32_t> type_ids;
  std::vector<std::string> tokens;
  std::vector<Offsets> offsets;
  std::vector<int32_t> word_ids;  // -1 for none
  std::vector<uint32_t> special_tokens_mask;
  std::vector<uint32_t> attention_mask;

  size_t size() const { return ids.size(); }
  void Append(const Encoding& other);
  void Push(uint32_t id, std::string token, Offsets offsets, int32_t word, uint32_t type_id,
            uint32_t special);
};

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  virtual void Normalize(NormalizedString& normalized) const = 0;
};

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  virtual void PreTokenize(PreTokenizedString& pretokenized) const = 0;
};

class Model {
 public:
  virtual ~Model() = default;
  // Appends the tokens of one pre-tokenized piece.
  virtual absl::Status Tokenize(std::string_view sequence, std::vector<Token>& tokens) const = 0;
  virtual std::optional<uint32_t> TokenToId(std::string_view token) const = 0;
  virtual const std::string* IdToToken(uint32_t id) const = 0;
  virtual size_t VocabSize() const = 0;
};

class PostProcessor {
 public:
  virtual ~PostProcessor() = default;
  virtual size_t AddedTokens(bool is_pair) const = 0;
  // Transforms the per-sequence encodings (one, or two for a pair) in place.
  virtual absl::Status ProcessEncodings(std::vector<Encoding>& encodings,
                                        bool add_special_tokens) const = 0;
};

class Decoder {
 public:
  virtual ~Decoder() = default;
  virtual void DecodeChain(std::vector<std::string>& tokens) const = 0;
};

// Builders from tokenizer.json objects; `path` names the object in errors ("normalizer.normalizers[1]").
absl::StatusOr<std::unique_ptr<Normalizer>> NormalizerFromJson(const nlohmann::json& json,
                                                                const std::string& path);
absl::StatusOr<std::unique_ptr<PreTokenizer>> PreTokenizerFromJson(const nlohmann::json& json,
                                                                    const std::string& path);
absl::StatusOr<std::unique_ptr<Model>> ModelFromJson(const nlohmann::json& json,
                                                      const std::string& path);
absl::StatusOr<std::unique_ptr<PostProcessor>> PostProcessorFromJson(const nlohmann::json& json,
                                                                      const std::string& path);
absl::StatusOr<std::unique_ptr<Decoder>> DecoderFromJson(const nlohmann::json& json,
                                                          const std::string& path);

// The GPT-2 byte-to-character table of the ByteLevel pre-tokenizer and decoder.
const std::string& ByteLevelCharacter(uint8_t byte);  // UTF-8 of the character for `byte`
int ByteLevelByte(char32_t character);                 // -1 when not in the table

// The offset trimming of the ByteLevel and Roberta post-processors.
void TrimByteLevelOffsets(Encoding& encoding, bool add_prefix_space);

}  // namespace flotilla::tokenizer
