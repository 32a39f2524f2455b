#include "services/common/request_id.h"

#include <mutex>
#include <random>
#include <unordered_map>

namespace flotilla {
namespace {

struct RequestIdTable {
  std::mutex mutex;
  std::unordered_map<const grpc::ServerContextBase*, std::string> ids;
};

RequestIdTable& Table() {
  static RequestIdTable table;
  return table;
}

}  // namespace

std::string NewRequestId() {
  thread_local std::mt19937_64 generator{std::random_device{}()};
  static constexpr char kHexDigits[] = "0123456789abcdef";
  uint64_t bits = generator();
  std::string id(16, '0');
  for (char& digit : id) {
    digit = kHexDigits[bits & 0xf];
    bits >>= 4;
  }
  return id;
}

std::string RequestIdOf(const grpc::ServerContextBase* context) {
  RequestIdTable& table = Table();
  std::lock_guard<std::mutex> lock(table.mutex);
  auto found = table.ids.find(context);
  return found == table.ids.end() ? std::string() : found->second;
}

void AttachRequestId(grpc::ClientContext* context, const std::string& request_id) {
  if (!request_id.empty()) context->AddMetadata(kRequestIdMetadataKey, request_id);
}

void RememberRequestId(const grpc::ServerContextBase* context, std::string request_id) {
  RequestIdTable& table = Table();
  std::lock_guard<std::mutex> lock(table.mutex);
  table.ids[context] = std::move(request_id);
}

void ForgetRequestId(const grpc::ServerContextBase* context) {
  RequestIdTable& table = Table();
  std::lock_guard<std::mutex> lock(table.mutex);
  table.ids.erase(context);
}

}  // namespace flotilla
