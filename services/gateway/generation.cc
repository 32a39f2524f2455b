#include "services/gateway/generation.h"

#include <utility>

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "services/common/logging.h"
#include "services/common/status.h"
#include "services/gateway/gateway.h"
#include "services/gateway/stop_strings.h"

namespace flotilla::gateway {

GenerationRun::GenerationRun(Gateway& gateway, GenerationJob job) : gateway_(gateway), job_(std::move(job)) {
  std::lock_guard<std::mutex> lock(mutex_);
  choices_running_ = job_.n;
  calls_.resize(job_.n);
  for (int index = 0; index < job_.n; ++index) threads_.emplace_back([this, index] { RunChoice(index); });
}

GenerationRun::~GenerationRun() {
  Cancel();
  for (std::thread& thread : threads_) thread.join();
}

void GenerationRun::Cancel() {
  std::lock_guard<std::mutex> lock(mutex_);
  cancelled_ = true;
  for (const auto& call : calls_) {
    if (call != nullptr) call->TryCancel();  // the worker aborts the sequence and frees its blocks
  }
}

void GenerationRun::Push(ChoiceDelta delta) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    const bool last = !delta.finish_reason.empty() || !delta.error.ok();
    deltas_.push_back(std::move(delta));
    if (last) --choices_running_;
  }
  ready_.notify_one();
}

std::optional<ChoiceDelta> GenerationRun::Next(std::chrono::milliseconds timeout, bool* timed_out) {
  if (timed_out != nullptr) *timed_out = false;
  std::unique_lock<std::mutex> lock(mutex_);
  if (!ready_.wait_for(lock, timeout, [this] { return !deltas_.empty() || choices_running_ == 0; })) {
    if (timed_out != nullptr) *timed_out = true;
    return std::nullopt;
  }
  if (deltas_.empty()) return std::nullopt;
  ChoiceDelta delta = std::move(deltas_.front());
  deltas_.pop_front();
  return delta;
}

// Note [Request migration]: a choice's state lives here — the prompt, every token received, the
// detokenizer and the stop-string matcher. When its worker's stream breaks (the process died, the
// pod went away: UNAVAILABLE, or the stream ended without a finish reason), the choice goes to
// another replica with the received tokens as generated_token_ids: the new worker recomputes their
// KV, counts them against max_tokens and the penalties, and continues. Seeded sampling draws from
// (seed, position), so a resumed choice samples what the dead worker would have.
void GenerationRun::RunChoice(int index) {
  const std::string choice_id = job_.n == 1 ? job_.request_id : absl::StrCat(job_.request_id, "-", index);
  // A model folder without a tokenizer serves token ids only: no text.
  std::optional<tokenizer::IncrementalDecoder> decoder;
  if (job_.tokenizer != nullptr) decoder.emplace(*job_.tokenizer, job_.skip_special_tokens);
  StopStringMatcher stop_matcher(job_.stop, job_.include_stop_string);
  std::vector<int32_t> generated;
  std::vector<int64_t> failed_replicas;
  int cached_prompt_tokens = 0;
  auto last_token_at = job_.arrival;
  double queue_seconds = 0;
  bool got_first_token = false;

  auto finish = [&](ChoiceDelta delta) {
    delta.index = index;
    delta.prompt_tokens = static_cast<int>(job_.prompt_token_ids.size());
    delta.completion_tokens = static_cast<int>(generated.size());
    delta.cached_prompt_tokens = cached_prompt_tokens;
    const std::string reason = delta.error.ok() ? delta.finish_reason : "error";
    gateway_.ObserveRequest(job_.model,
                            std::chrono::duration<double>(std::chrono::steady_clock::now() - job_.arrival).count(),
                            queue_seconds, delta.prompt_tokens, delta.completion_tokens, reason);
    Push(std::move(delta));
  };

  for (int attempt = 0;; ++attempt) {
    absl::StatusOr<Router::Pick> pick = gateway_.router().Choose(job_.model, job_.prompt_token_ids, failed_replicas);
    if (!pick.ok()) {
      ChoiceDelta delta;
      delta.error = attempt == 0 ? pick.status()
                                 : absl::UnavailableError(absl::StrCat("every replica of ", job_.model,
                                                                       " failed while generating: ", pick.status().message()));
      return finish(std::move(delta));
    }
    if (attempt == 0) {
      queue_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - job_.arrival).count();
    }
    flotilla::v1::WorkerGenerateRequest request = job_.worker_request;
    request.set_request_id(attempt == 0 ? choice_id : absl::StrCat(choice_id, "-migrated-", attempt));
    request.mutable_prompt_token_ids()->Assign(job_.prompt_token_ids.begin(), job_.prompt_token_ids.end());
    request.mutable_generated_token_ids()->Assign(generated.begin(), generated.end());
    if (job_.n > 1 && request.sampling().has_seed()) {
      // Each choice its own stream of draws, still reproducible from the request's seed.
      request.mutable_sampling()->set_seed(request.sampling().seed() + static_cast<uint64_t>(index));
    }

    auto context = std::make_shared<grpc::ClientContext>();
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (cancelled_) {
        gateway_.router().Release(pick->replica_id);
        ChoiceDelta delta;
        delta.finish_reason = "abort";
        return finish(std::move(delta));
      }
      calls_[index] = context;
    }
    std::unique_ptr<flotilla::v1::WorkerService::Stub> stub = gateway_.WorkerStub(pick->address);
    std::unique_ptr<grpc::ClientReader<flotilla::v1::WorkerGenerateResponse>> reader = stub->Generate(context.get(), request);
    flotilla::v1::WorkerGenerateResponse response;
    std::string finish_reason;
    bool stopped_by_string = false;
    while (reader->Read(&response)) {
      if (response.prompt_tokens() > 0 && attempt == 0) cached_prompt_tokens = response.cached_prompt_tokens();
      ChoiceDelta delta;
      delta.index = index;
      const auto now = std::chrono::steady_clock::now();
      for (const flotilla::v1::GeneratedToken& token : response.tokens()) {
        if (stopped_by_string) break;
        generated.push_back(token.token_id());
        delta.tokens.push_back(token);
        if (!decoder.has_value()) continue;
        absl::StatusOr<std::string> piece = decoder->Step(static_cast<uint32_t>(token.token_id()));
        if (!piece.ok()) {
          delta.error = absl::InternalError(absl::StrCat("detokenizing token ", token.token_id(), ": ", piece.status().message()));
          break;
        }
        StopStringMatcher::Result matched = stop_matcher.Feed(*piece);
        delta.text += matched.text;
        if (matched.stopped) stopped_by_string = true;
      }
      if (!delta.tokens.empty()) {
        if (!got_first_token) {
          got_first_token = true;
          gateway_.ObserveFirstToken(job_.model, std::chrono::duration<double>(now - job_.arrival).count());
        } else {
          gateway_.ObserveInterToken(job_.model, std::chrono::duration<double>(now - last_token_at).count());
        }
        last_token_at = now;
      }
      if (!delta.error.ok()) {
        context->TryCancel();
        reader->Finish();
        gateway_.router().Release(pick->replica_id);
        return finish(std::move(delta));
      }
      if (stopped_by_string) {
        // The stop string ends the choice here; the worker stops at its next step.
        context->TryCancel();
        delta.finish_reason = "stop";
        reader->Finish();
        gateway_.router().Release(pick->replica_id);
        return finish(std::move(delta));
      }
      if (!response.finish_reason().empty()) {
        finish_reason = response.finish_reason();
        delta.text += stop_matcher.Flush();
        delta.finish_reason = finish_reason;
        reader->Finish();
        gateway_.router().Release(pick->replica_id);
        return finish(std::move(delta));
      }
      if (!delta.tokens.empty() || !delta.text.empty()) Push(std::move(delta));
    }
    const grpc::Status status = reader->Finish();
    gateway_.router().Release(pick->replica_id);
    bool cancelled;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      cancelled = cancelled_;
      calls_[index] = nullptr;
    }
    if (cancelled) {
      ChoiceDelta delta;
      delta.finish_reason = "abort";
      return finish(std::move(delta));
    }
    // The worker refused the request itself (bad input, draining before it started): not a
    // broken stream, so no migration — except draining, which another replica can take.
    const bool broken = status.error_code() == grpc::StatusCode::UNAVAILABLE ||
                        status.error_code() == grpc::StatusCode::OK;  // ended without a finish reason
    if (!broken || attempt >= gateway_.options().max_migrations) {
      ChoiceDelta delta;
      delta.error = FromGrpcStatus(status);
      if (delta.error.ok()) delta.error = absl::UnavailableError("the worker ended the stream without a finish reason");
      return finish(std::move(delta));
    }
    LogWarning("worker stream broke; moving the request to another replica",
               {{"request_id", choice_id}, {"worker", pick->address}, {"tokens_so_far", generated.size()},
                {"status", status.error_message()}});
    gateway_.CountMigration(job_.model);
    failed_replicas.push_back(pick->replica_id);
    // The dead replica's registration stream will end too; until then, don't pick it again.
  }
}

}  // namespace flotilla::gateway
