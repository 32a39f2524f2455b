// flotilla chat: talk to a served model through the gateway's GatewayService.Generate (chat
// messages), printing the text as it streams in.
//
//   flotilla chat smollm2 "What is the capital of France?"   # one answer
//   flotilla chat smollm2 --system "Answer in French."       # a conversation on stdin, until EOF or /exit
//
// The gateway is --gateway host:port, else $FLOTILLA_GATEWAY, else the running local mesh's. A
// gateway error (an unknown model, an unreachable gateway) is one line on stderr and exit code 1.
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <string>

#include <absl/status/status.h>
#include <absl/strings/str_cat.h>
#include <grpcpp/grpcpp.h>

#include "flotilla/v1/gateway.grpc.pb.h"
#include "tools/cli/commands.h"
#include "tools/cli/mesh.h"

namespace flotilla::cli {
namespace {

struct ChatOptions {
  std::string model;
  std::string message;
  std::string system;
  int max_tokens = 0;
  float temperature = 0;
  std::string gateway;
  std::string data_directory = DefaultDataDirectory();
};

std::string GatewayAddress(const ChatOptions& options) {
  if (!options.gateway.empty()) return options.gateway;
  if (const char* address = std::getenv("FLOTILLA_GATEWAY"); address && *address) return address;
  absl::StatusOr<std::string> address = RunningServiceAddress(options.data_directory, "gateway");
  if (!address.ok()) {
    throw CommandFailed(1, absl::StrCat("chat: no gateway address: pass --gateway host:port, set FLOTILLA_GATEWAY, "
                                        "or start the local mesh (`flotilla up`): ", address.status().message()));
  }
  return *address;
}

// The gateway's answer to a failed call, as one line that says what to do.
std::string DescribeFailure(const grpc::Status& status, const std::string& model, const std::string& gateway) {
  switch (status.error_code()) {
    case grpc::StatusCode::NOT_FOUND:
      return absl::StrCat("chat ", model, ": the gateway at ", gateway, " serves no model named ", model,
                          " (`flotilla status` lists what is served): ", status.error_message());
    case grpc::StatusCode::UNAVAILABLE:
      return absl::StrCat("chat ", model, ": the gateway at ", gateway, " is unavailable: ", status.error_message());
    default:
      return absl::StrCat("chat ", model, ": GatewayService.Generate at ", gateway, " failed (",
                          absl::StatusCodeToString(static_cast<absl::StatusCode>(status.error_code())),
                          "): ", status.error_message());
  }
}

// Streams one answer to `conversation`, printing its text as it arrives; returns the whole text.
std::string StreamAnswer(flotilla::v1::GatewayService::Stub& gateway, const ChatOptions& options,
                         const std::string& gateway_address, const flotilla::v1::ChatMessages& conversation) {
  flotilla::v1::GenerateRequest request;
  request.set_model(options.model);
  *request.mutable_chat() = conversation;
  request.mutable_sampling()->set_max_new_tokens(options.max_tokens);
  request.mutable_sampling()->set_temperature(options.temperature);
  grpc::ClientContext context;
  std::unique_ptr<grpc::ClientReader<flotilla::v1::GenerateResponse>> stream = gateway.Generate(&context, request);
  flotilla::v1::GenerateResponse response;
  std::string answer;
  while (stream->Read(&response)) {
    answer += response.text();
    std::fwrite(response.text().data(), 1, response.text().size(), stdout);
    std::fflush(stdout);
  }
  const grpc::Status status = stream->Finish();
  if (!answer.empty()) std::printf("\n");
  if (!status.ok()) throw CommandFailed(1, DescribeFailure(status, options.model, gateway_address));
  if (answer.empty()) std::printf("\n");
  return answer;
}

void AddMessage(flotilla::v1::ChatMessages& conversation, const std::string& role, const std::string& content) {
  flotilla::v1::ChatMessage* message = conversation.add_messages();
  message->set_role(role);
  message->set_content(content);
}

void Chat(const ChatOptions& options) {
  const std::string gateway_address = GatewayAddress(options);
  auto gateway = flotilla::v1::GatewayService::NewStub(
      grpc::CreateChannel(gateway_address, grpc::InsecureChannelCredentials()));
  flotilla::v1::ChatMessages conversation;
  if (!options.system.empty()) AddMessage(conversation, "system", options.system);
  if (!options.message.empty()) {
    AddMessage(conversation, "user", options.message);
    StreamAnswer(*gateway, options, gateway_address, conversation);
    return;
  }
  // Interactive: each line is one user turn; the answers join the history the next turn sends.
  const bool interactive = isatty(STDIN_FILENO);
  if (interactive) std::fprintf(stderr, "Chatting with %s (end with /exit or Ctrl-D).\n", options.model.c_str());
  std::string line;
  while (true) {
    if (interactive) {
      std::fprintf(stderr, "> ");
      std::fflush(stderr);
    }
    if (!std::getline(std::cin, line) || line == "/exit") break;
    if (line.empty()) continue;
    AddMessage(conversation, "user", line);
    AddMessage(conversation, "assistant", StreamAnswer(*gateway, options, gateway_address, conversation));
  }
  if (interactive) std::fprintf(stderr, "\n");
}

}  // namespace

void AddChatCommands(CLI::App& app) {
  auto options = std::make_shared<ChatOptions>();
  CLI::App* chat = app.add_subcommand(
      "chat", "Chat with a served model through the gateway (one message, or a conversation on stdin)");
  chat->add_option("model", options->model, "The served model name (`flotilla status` lists them)")->required();
  chat->add_option("message", options->message,
                   "The message to answer; without it, each line of stdin is one turn until EOF or /exit");
  chat->add_option("--system", options->system, "A system message that opens the conversation");
  chat->add_option("--max-tokens", options->max_tokens, "Most tokens per answer (default: up to the model's context)")
      ->check(CLI::NonNegativeNumber);
  chat->add_option("--temperature", options->temperature, "Sampling temperature; 0 (the default) is greedy")
      ->check(CLI::Range(0.0, 2.0));
  chat->add_option("--gateway", options->gateway,
                   "The gateway's gRPC address host:port (default $FLOTILLA_GATEWAY, else the local mesh's)");
  chat->add_option("--data-dir", options->data_directory, "The local mesh's data directory");
  chat->callback([options] { Chat(*options); });
}

}  // namespace flotilla::cli
