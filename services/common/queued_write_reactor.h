// A server-streaming reactor fed from any thread: producers append to the response that is not
// yet being written, one write is in flight at a time, and the call finishes once everything
// queued is written. Updates that arrive while a write is in flight merge into the next message,
// so a slow client never makes a producer wait (the worker's engine, the gateway's choices).
//
//   class TokenReactor : public QueuedWriteReactor<GenerateResponse> {
//     void OnCancelled() override { engine.Abort(id); }   // gRPC's OnCancel, forwarded
//   };
//   reactor->Update([&](GenerateResponse& response) { response.add_token_ids(id); });
//   reactor->Close(grpc::Status::OK);   // after the last Update
//
// A client that goes away makes later writes fail; the reactor then drops what is queued and
// finishes with CANCELLED once Close is called. Producers must call Close exactly once, and may
// not touch the reactor after it (OnDone deletes it).
//
// Thread-safety: Update and Close may be called from any thread.
#pragma once

#include <deque>
#include <functional>
#include <mutex>
#include <optional>

#include <grpcpp/grpcpp.h>

namespace flotilla {

template <typename Response>
class QueuedWriteReactor : public grpc::ServerWriteReactor<Response> {
 public:
  void Update(const std::function<void(Response&)>& update) {
    std::unique_lock<std::mutex> lock(mutex_);
    if (broken_ || closing_) return;
    if (queue_.empty()) queue_.emplace_back();  // the response in flight left the queue
    update(queue_.back());
    Proceed(lock);
  }

  void Close(grpc::Status status) {
    std::unique_lock<std::mutex> lock(mutex_);
    closing_ = true;
    final_status_ = std::move(status);
    Proceed(lock);
  }

  void OnWriteDone(bool ok) override {
    std::unique_lock<std::mutex> lock(mutex_);
    writing_ = false;
    if (!ok) {
      broken_ = true;
      queue_.clear();
    }
    Proceed(lock);
  }

  void OnCancel() override { OnCancelled(); }
  void OnDone() override { delete this; }

 protected:
  virtual void OnCancelled() {}

 private:
  // Starts the next write, or finishes. Finish is called after the lock is released: OnDone may
  // delete the reactor on another thread as soon as Finish is called.
  void Proceed(std::unique_lock<std::mutex>& lock) {
    if (writing_ || finished_) return;
    if (!queue_.empty() && !broken_) {
      current_ = std::move(queue_.front());
      queue_.pop_front();
      writing_ = true;
      this->StartWrite(&current_);
      return;
    }
    if (!closing_) return;
    finished_ = true;
    grpc::Status status = broken_ && final_status_.ok() ? grpc::Status(grpc::StatusCode::CANCELLED, "the client went away")
                                                        : final_status_;
    lock.unlock();
    this->Finish(status);
  }

  std::mutex mutex_;
  std::deque<Response> queue_;  // guarded by mutex_
  Response current_;            // the response being written
  grpc::Status final_status_;   // guarded by mutex_
  bool writing_ = false;        // guarded by mutex_
  bool broken_ = false;         // guarded by mutex_
  bool closing_ = false;        // guarded by mutex_
  bool finished_ = false;       // guarded by mutex_
};

}  // namespace flotilla
