// Structured logs: one JSON object per line on stderr, so a log shipper (or `jq`) reads them
// without parsing prose.
//
//   flotilla::LogInfo("push committed", {{"repository", "acme/llama"}, {"bytes", 1234}});
//   // {"time":"2026-11-25T04:10:00.123Z","level":"info","service":"registry",
//   //  "message":"push committed","repository":"acme/llama","bytes":1234}
//
// Thread-safe: each line is written whole under a mutex.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

namespace flotilla {

enum class LogLevel { kDebug, kInfo, kWarning, kError };

// Names the process in every line ("registry", "gateway", "flotilla"). Call once from main.
void SetLogServiceName(std::string service_name);
// Lines below this level are dropped. Default: kInfo.
void SetMinimumLogLevel(LogLevel level);
bool ParseLogLevel(const std::string& text, LogLevel* level);

// `fields` must be a JSON object; its keys are merged into the line.
void Log(LogLevel level, const std::string& message, const nlohmann::json& fields = nlohmann::json::object());
inline void LogDebug(const std::string& message, const nlohmann::json& fields = nlohmann::json::object()) {
  Log(LogLevel::kDebug, message, fields);
}
inline void LogInfo(const std::string& message, const nlohmann::json& fields = nlohmann::json::object()) {
  Log(LogLevel::kInfo, message, fields);
}
inline void LogWarning(const std::string& message, const nlohmann::json& fields = nlohmann::json::object()) {
  Log(LogLevel::kWarning, message, fields);
}
inline void LogError(const std::string& message, const nlohmann::json& fields = nlohmann::json::object()) {
  Log(LogLevel::kError, message, fields);
}

// Renders one log line without writing it (what Log writes, minus the newline). For tests.
std::string FormatLogLine(LogLevel level, const std::string& message, const nlohmann::json& fields);

}  // namespace flotilla
