#include "services/worker/sequence.h"

#include <algorithm>
#include <random>

namespace flotilla::worker {

uint64_t RandomSamplingSeed() {
  // One random_device read per thread, then a 64-bit engine: seeds need to differ between
  // sequences, not to be cryptographic.
  thread_local std::mt19937_64 engine = [] {
    std::random_device device;
    std::seed_seq seeds{device(), device(), device(), device()};
    return std::mt19937_64(seeds);
  }();
  return engine();
}

bool Sequence::IsStopToken(int32_t token) const {
  if (std::find(stop_token_ids.begin(), stop_token_ids.end(), token) != stop_token_ids.end()) {
    return true;
  }
  return !ignore_eos &&
         std::find(eos_token_ids.begin(), eos_token_ids.end(), token) != eos_token_ids.end();
}

bool Sequence::AppendToken(int32_t token) {
  output_token_ids.push_back(token);
  if (num_output_tokens() >= min_tokens && IsStopToken(token)) {
    Finish(kFinishReasonStop);
    return true;
  }
  if (num_output_tokens() >= max_tokens || (max_model_len > 0 && num_tokens() >= max_model_len)) {
    Finish(kFinishReasonLength);
    return true;
  }
  return false;
}

void Sequence::Finish(const char* reason) {
  status = SequenceStatus::kFinished;
  finish_reason = reason;
}

}  // namespace flotilla::worker
