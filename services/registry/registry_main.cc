// The registry service binary: RegistryService over gRPC, and the Hugging Face Hub HTTP API on the
// HTTP side port. State lives under --data_dir: blobs/, uploads/, metadata.sqlite3 and xet/; with
// --metadata_url the metadata and Xet tables live in PostgreSQL instead, shared by every replica.
#include <algorithm>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include <absl/flags/flag.h>
#include <absl/strings/str_cat.h>

#include "services/common/logging.h"
#include "services/common/server.h"
#include "services/registry/auth.h"
#include "services/registry/hub_api.h"
#include "services/registry/registry.h"
#include "services/registry/registry_service.h"

ABSL_FLAG(std::string, tokens_file, "",
          "file of access tokens, one a line: <token> <name> <namespace or *> <read|write>; "
          "without tokens every call is allowed");
ABSL_FLAG(std::vector<std::string>, token, {},
          "an access token as 'token:name:namespace:scope' (repeatable, comma-separated)");
ABSL_FLAG(bool, anonymous_read, true, "with tokens configured, whether reads without a token are allowed");
ABSL_FLAG(double, gc_grace_seconds, 600, "garbage collection spares unreferenced blobs younger than this");
ABSL_FLAG(double, stale_partial_seconds, 86400,
          "partial uploads untouched this long are deleted at start and by garbage collection");
ABSL_FLAG(int, hub_tree_page_size, 1000, "entries per page of the Hub API's tree listing");
ABSL_FLAG(double, xet_token_seconds, 900,
          "lifetime of the Xet CAS tokens the xet-read-token / xet-write-token routes issue");
ABSL_FLAG(std::string, metadata_url, "",
          "PostgreSQL database for the metadata and Xet tables, as a libpq URL "
          "(postgresql://user@host:5432/db; the password may come from PGPASSWORD or ~/.pgpass rather than the "
          "URL); several registry replicas share one. Default: SQLite files under --data_dir");
ABSL_FLAG(std::string, public_url, "",
          "base URL clients reach the Hub API at (for absolute links); default: the request's Host");

namespace flotilla::registry {
namespace {

struct RegistryState {
  std::unique_ptr<Registry> registry;
  Authorizer authorizer;
  std::unique_ptr<HubApi> hub_api;
};

absl::StatusOr<ServiceBundle> MakeRegistryBundle(const ServerOptions& options) {
  if (options.data_directory.empty()) {
    return absl::InvalidArgumentError("--data_dir is required: the registry keeps its blobs and metadata there");
  }
  std::vector<std::string> token_lines;
  if (const std::string path = absl::GetFlag(FLAGS_tokens_file); !path.empty()) {
    std::ifstream file(path);
    if (!file) return absl::InvalidArgumentError(absl::StrCat("--tokens_file: cannot read ", path));
    for (std::string line; std::getline(file, line);) token_lines.push_back(line);
  }
  for (const std::string& token : absl::GetFlag(FLAGS_token)) {
    std::string line = token;
    std::replace(line.begin(), line.end(), ':', ' ');
    token_lines.push_back(line);
  }
  auto authorizer = Authorizer::Create(token_lines, absl::GetFlag(FLAGS_anonymous_read));
  if (!authorizer.ok()) return authorizer.status();

  RegistryOptions registry_options;
  registry_options.data_directory = options.data_directory;
  registry_options.metadata_url = absl::GetFlag(FLAGS_metadata_url);
  if (!registry_options.metadata_url.empty() && !IsPostgresUrl(registry_options.metadata_url)) {
    return absl::InvalidArgumentError(absl::StrCat("--metadata_url: expected a postgresql:// URL but got '",
                                                   RedactedDatabaseUrl(registry_options.metadata_url),
                                                   "' (leave it empty for SQLite under --data_dir)"));
  }
  registry_options.garbage_grace_period = absl::Seconds(absl::GetFlag(FLAGS_gc_grace_seconds));
  registry_options.stale_partial_age = absl::Seconds(absl::GetFlag(FLAGS_stale_partial_seconds));
  auto registry = Registry::Open(registry_options);
  if (!registry.ok()) return registry.status();

  auto state = std::make_shared<RegistryState>();
  state->registry = *std::move(registry);
  state->authorizer = *std::move(authorizer);
  state->hub_api = std::make_unique<HubApi>(*state->registry, state->authorizer, absl::GetFlag(FLAGS_public_url),
                                                std::max(1, absl::GetFlag(FLAGS_hub_tree_page_size)),
                                                absl::Seconds(absl::GetFlag(FLAGS_xet_token_seconds)));
  UpdateStorageGauges(*state->registry);
  LogInfo("registry opened", {{"data_dir", options.data_directory},
                              {"metadata", registry_options.metadata_url.empty()
                                               ? std::string("sqlite")
                                               : RedactedDatabaseUrl(registry_options.metadata_url)},
                              {"stored_bytes", state->registry->stored_bytes()},
                              {"auth", state->authorizer.enabled() ? "tokens" : "off"}});

  ServiceBundle bundle;
  bundle.grpc_services.push_back(MakeRegistryGrpcService(*state->registry, state->authorizer));
  bundle.add_http_routes = [hub_api = state->hub_api.get()](httplib::Server& server) { hub_api->AddRoutes(server); };
  bundle.state = state;
  return bundle;
}

}  // namespace
}  // namespace flotilla::registry

int main(int argc, char** argv) {
  return flotilla::ServiceMain(argc, argv, "registry", flotilla::registry::MakeRegistryBundle);
}
