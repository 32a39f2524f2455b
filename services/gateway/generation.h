// The gateway's generation core, shared by its gRPC API and its OpenAI HTTP API: a request's
// choices go to worker replicas as token ids; tokens come back on one stream per choice and leave
// as text deltas — detokenized incrementally (never splitting a UTF-8 character), with stop
// strings held back until they can no longer match. The gateway keeps each choice's prompt and
// tokens so far and nothing else, so when a worker's stream breaks mid-generation the choice is
// re-submitted to another replica with those tokens carried over (request migration), and the
// consumer's stream simply continues.
//
//   GenerationRun run(gateway, std::move(job));          // starts a thread per choice
//   while (std::optional<ChoiceDelta> delta = run.Next(std::chrono::milliseconds(200))) {
//     if (client_gone) run.Cancel();                      // aborts the choices on their workers
//     write(*delta);
//   }
//
// Thread-safety: one consumer thread calls Next; Cancel may be called from any thread.
#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "flotilla/v1/worker.grpc.pb.h"
#include "services/preprocess/tokenizer/tokenizer.h"

namespace flotilla::gateway {

class Gateway;

// One generation as the API layer hands it over: tokenized, validated, bounded.
struct GenerationJob {
  std::string model;
  std::string request_id;
  std::vector<int32_t> prompt_token_ids;
  // Sampling, max_tokens, min_tokens, stop ids, ignore_eos, priority; the core fills request_id,
  // the prompt and the tokens carried over by a failover.
  flotilla::v1::WorkerGenerateRequest worker_request;
  std::vector<std::string> stop;
  bool include_stop_string = false;
  bool skip_special_tokens = true;
  int n = 1;
  // Keeps the tokenizer alive while the run uses it.
  std::shared_ptr<const void> tokenizer_owner;
  const tokenizer::Tokenizer* tokenizer = nullptr;
  std::chrono::steady_clock::time_point arrival = std::chrono::steady_clock::now();
};

struct ChoiceDelta {
  int index = 0;
  std::string text;                                 // new text, safe to show
  std::vector<flotilla::v1::GeneratedToken> tokens;  // the tokens behind it (ids, logprobs)
  std::string finish_reason;                        // set on the choice's last delta
  int prompt_tokens = 0;                            // on the last delta
  int completion_tokens = 0;                        // on the last delta
  int cached_prompt_tokens = 0;                     // on the last delta
  absl::Status error;                               // a failure: also the choice's last delta
};

class GenerationRun {
 public:
  GenerationRun(Gateway& gateway, GenerationJob job);
  ~GenerationRun();  // cancels what still runs and joins

  // The next delta of any choice, in the order they were produced; nullopt once every choice has
  // finished, or when `timeout` passed first (then *timed_out is set, if given).
  std::optional<ChoiceDelta> Next(std::chrono::milliseconds timeout, bool* timed_out = nullptr);
  void Cancel();

 private:
  void RunChoice(int index);
  void Push(ChoiceDelta delta);

  Gateway& gateway_;
  GenerationJob job_;
  std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<ChoiceDelta> deltas_;                       // guarded by mutex_
  int choices_running_ = 0;                              // guarded by mutex_
  bool cancelled_ = false;                               // guarded by mutex_
  std::vector<std::shared_ptr<grpc::ClientContext>> calls_;  // guarded by mutex_; one per choice
  std::vector<std::thread> threads_;
};

}  // namespace flotilla::gateway
