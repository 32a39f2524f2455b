// Tokenizer: text to token ids and back, from a Hugging Face `tokenizer.json`, with the ids, tokens
// and offsets that the Rust `tokenizers` library produces for the same file and text. Read this
// header first; components.h has the pipeline stages and normalized_string.h the offset tracking.
//
//   auto tokenizer = flotilla::tokenizer::Tokenizer::FromDirectory("/models/SmolLM2");
//   if (!tokenizer.ok()) return tokenizer.status();
//   auto encoding = (*tokenizer)->Encode("Hello world");      // ids, tokens, offsets, masks
//   auto text = (*tokenizer)->Decode(encoding->ids, /*skip_special_tokens=*/true);
//
// Input text must be valid UTF-8 (Python's `tokenizers` only accepts `str`, which always is); an
// invalid byte sequence is rejected with INVALID_ARGUMENT naming its byte offset.
//
// Thread safety: a Tokenizer is immutable once loaded; Encode, EncodeBatch and Decode may be called
// from any number of threads. An IncrementalDecoder belongs to one stream (one thread at a time).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "services/preprocess/tokenizer/components.h"

namespace flotilla::tokenizer {

// Byte offsets index the UTF-8 input; character offsets count Unicode code points, which is what
// Python's `Tokenizer.encode(...).offsets` reports.
enum class OffsetType { kByte, kChar };

struct TruncationParams;

struct EncodeOptions {
  bool add_special_tokens = true;
  OffsetType offset_type = OffsetType::kByte;
  // Overrides tokenizer.json's truncation for this call (what `enable_truncation` would set);
  // nullptr keeps the file's. The preprocess service passes a request's max_length here, since a
  // shared Tokenizer must not be mutated.
  const TruncationParams* truncation = nullptr;
  // false ignores tokenizer.json's padding, as transformers' tokenizer call with padding=False
  // does: the gateway sends unpadded ids, and the worker pads the batch it runs.
  bool apply_padding = true;
};

// An entry of tokenizer.json's "added_tokens".
struct AddedToken {
  uint32_t id = 0;
  std::string content;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = true;
  bool special = false;
};

struct TruncationParams {
  enum class Strategy { kLongestFirst, kOnlyFirst, kOnlySecond };
  size_t max_length = 512;
  Strategy strategy = Strategy::kLongestFirst;
  bool truncate_left = false;  // direction "Left"
};

struct PaddingParams {
  std::optional<size_t> fixed_length;  // nullopt: pad to the longest of the batch
  bool pad_left = false;
  std::optional<size_t> pad_to_multiple_of;
  uint32_t pad_id = 0;
  uint32_t pad_type_id = 0;
  std::string pad_token = "[PAD]";
};

class Tokenizer {
 public:
  // Loads `directory`/tokenizer.json.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromDirectory(const std::string& directory);
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromFile(const std::string& path);
  // `source` names the file in error messages.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromJson(std::string_view json_text,
                                                             const std::string& source = "tokenizer.json");

  absl::StatusOr<Encoding> Encode(std::string_view text, const EncodeOptions& options = {}) const;
  absl::StatusOr<Encoding> EncodePair(std::string_view text, std::string_view pair,
                                      const EncodeOptions& options = {}) const;
  // Encodes every text on a shared pool of all cores, then applies batch padding.
  absl::StatusOr<std::vector<Encoding>> EncodeBatch(std::span<const std::string_view> texts,
                                                    const EncodeOptions& options = {}) const;
  // The same for pairs (tokenizers' encode_batch([(text, pair), ...])).
  absl::StatusOr<std::vector<Encoding>> EncodePairBatch(
      std::span<const std::pair<std::string_view, std::string_view>> pairs, const EncodeOptions& options = {}) const;

  absl::StatusOr<std::string> Decode(std::span<const uint32_t> ids, bool skip_special_tokens) const;

  std::optional<uint32_t> TokenToId(std::string_view token) const;
  std::optional<std::string> IdToToken(uint32_t id) const;
  // Model vocabulary plus added tokens with ids outside it.
  size_t VocabSize() const;

  const std::optional<TruncationParams>& truncation() const { return truncation_; }
  const std::optional<PaddingParams>& padding() const { return padding_; }
  void set_truncation(std::optional<TruncationParams> truncation) { truncation_ = truncation; }
  void set_padding(std::optional<PaddingParams> padding) { padding_ = std::move(padding); }

 private:
  // Leftmost-longest matching of added tokens' contents (tokenizers uses Aho-Corasick with
  // MatchKind::LeftmostLongest); a byte trie walked from each candidate start.
  class AddedTokenMatcher {
   public:
    void Add(std::string_view content, size_t token_index);
    bool empty() const { return terminal_.size() <= 1; }
    // Calls on_match(start, end, token_index) for non-overlapping leftmost-longest matches.
    template <typename Callback>
    void ForEachMatch(std::string_view text, Callback&& on_match) const;

   private:
    absl::flat_hash_map<uint64_t, uint32_t> children_;
    std::vector<int64_t> terminal_{-1};
    bool first_bytes_[256] = {};
  };

  Tokenizer() = default;
  absl::Status LoadAddedTokens(const nlohmann::json& json, const std::string& source);
  absl::StatusOr<Encoding> EncodeSequence(std::string_view text, uint32_t type_id,
                                          OffsetType offset_type) const;
  void SplitOnAddedTokens(const AddedTokenMatcher& matcher, PreTokenizedString& pretokenized,
                          bool normalize) const;
  absl::StatusOr<Encoding> PostProcess(Encoding encoding, std::optional<Encoding> pair,
                                       const EncodeOptions& options) const;

  std::unique_ptr<Normalizer> normalizer_;
  std::unique_ptr<PreTokenizer> pre_tokenizer_;
  std::unique_ptr<Model> model_;
  std::unique_ptr<PostProcessor> post_processor_;
  std::unique_ptr<Decoder> decoder_;
  std::vector<AddedToken> added_tokens_;
  absl::flat_hash_map<std::string, uint32_t, StringViewHash, StringViewEqual> added_token_ids_;
  absl::flat_hash_map<uint32_t, size_t> added_token_index_;  // id -> index in added_tokens_
  absl::flat_hash_set<std::string, StringViewHash, StringViewEqual> special_contents_;
  AddedTokenMatcher raw_matcher_;         // tokens with normalized = false
  AddedTokenMatcher normalized_matcher_;  // tokens with normalized = true, on normalized text
  std::optional<TruncationParams> truncation_;
  std::optional<PaddingParams> padding_;
};

// Turns a stream of generated ids into text pieces: each call to Step returns the new text that the
// ids so far add (possibly empty), never an incomplete UTF-8 character and never text returned
// before. Same contract as `tokenizers.decoders.DecodeStream`.
//
//   IncrementalDecoder stream(*tokenizer, /*skip_special_tokens=*/true);
//   for (uint32_t id : generated) std::cout << *stream.Step(id);
class IncrementalDecoder {
 public:
  IncrementalDecoder(const Tokenizer& tokenizer, bool skip_special_tokens)
      : tokenizer_(tokenizer), skip_special_tokens_(skip_special_tokens) {}
  absl::StatusOr<std::string> Step(uint32_t id);

 private:
  const Tokenizer& tokenizer_;
  bool skip_special_tokens_;
  std::vector<uint32_t> ids_;
  std::string prefix_;
  size_t prefix_index_ = 0;
};

}  // namespace flotilla::tokenizer
