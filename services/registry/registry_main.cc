// The registry service binary: RegistryService over gRPC, and the Hugging Face Hub HTTP API on the
// HTTP side port. State lives under --data_dir: blobs/, uploads/, metadata.sqlite3 and xet/; with
// --metadata_url the metadata and Xet tables live in PostgreSQL instead, shared by every replica.
#include <malloc.h>

#include <algorithm>
#include <cstdlib>
#include <initializer_list>
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
#include "services/registry/sql_database.h"

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
ABSL_FLAG(std::string, blob_url, "",
          "shared blob storage for replicas: s3://bucket[/prefix] (credentials from AWS_ACCESS_KEY_ID, "
          "AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN, or the --s3_* flags). Default: local disk under --data_dir");
ABSL_FLAG(std::string, s3_endpoint, "",
          "S3 endpoint URL, e.g. http://seaweedfs:8333 (default: AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, or AWS's "
          "https://s3.<region>.amazonaws.com)");
ABSL_FLAG(std::string, s3_region, "", "S3 region for signing (default: AWS_REGION, AWS_DEFAULT_REGION, us-east-1)");
ABSL_FLAG(int64_t, s3_multipart_threshold_bytes, int64_t{1} << 30,
          "blobs larger than this go to S3 as multipart uploads (a single PUT or COPY stops at 5 GiB)");
ABSL_FLAG(int64_t, s3_multipart_part_bytes, int64_t{64} << 20,
          "part size of those uploads (at least 5 MiB; each part is held in memory while it is sent)");
ABSL_FLAG(std::string, s3_access_key_id, "", "S3 access key id (default: AWS_ACCESS_KEY_ID)");
ABSL_FLAG(std::string, s3_secret_access_key, "",
          "S3 secret key (default: AWS_SECRET_ACCESS_KEY; prefer the environment, flags show in process listings)");
ABSL_FLAG(std::string, public_url, "",
          "base URL clients reach the Hub API at (for absolute links); default: the request's Host");

namespace flotilla::registry {
namespace {

// The flag if set, else the first environment variable set, else `fallback`.
std::string FlagOrEnvironment(const std::string& flag, std::initializer_list<const char*> variables,
                              const std::string& fallback = "") {
  if (!flag.empty()) return flag;
  for (const char* variable : variables) {
    if (const char* value = std::getenv(variable); value != nullptr && *value != '\0') return value;
  }
  return fallback;
}

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
  registry_options.blob_url = absl::GetFlag(FLAGS_blob_url);
  registry_options.s3.endpoint =
      FlagOrEnvironment(absl::GetFlag(FLAGS_s3_endpoint), {"AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"});
  registry_options.s3.region =
      FlagOrEnvironment(absl::GetFlag(FLAGS_s3_region), {"AWS_REGION", "AWS_DEFAULT_REGION"}, "us-east-1");
  registry_options.s3.access_key_id = FlagOrEnvironment(absl::GetFlag(FLAGS_s3_access_key_id), {"AWS_ACCESS_KEY_ID"});
  registry_options.s3.secret_access_key =
      FlagOrEnvironment(absl::GetFlag(FLAGS_s3_secret_access_key), {"AWS_SECRET_ACCESS_KEY"});
  registry_options.s3.session_token = FlagOrEnvironment("", {"AWS_SESSION_TOKEN"});
  registry_options.s3.multipart_threshold_bytes = absl::GetFlag(FLAGS_s3_multipart_threshold_bytes);
  registry_options.s3.multipart_part_bytes = absl::GetFlag(FLAGS_s3_multipart_part_bytes);
  constexpr int64_t kMinimumPartBytes = int64_t{5} << 20;  // S3's EntityTooSmall below this
  if (registry_options.s3.multipart_part_bytes < kMinimumPartBytes ||
      registry_options.s3.multipart_threshold_bytes > (int64_t{5} << 30)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--s3_multipart_part_bytes must be at least 5 MiB (", kMinimumPartBytes, ") and ",
        "--s3_multipart_threshold_bytes at most 5 GiB, but got ", registry_options.s3.multipart_part_bytes, " and ",
        registry_options.s3.multipart_threshold_bytes));
  }
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
                              {"blobs", registry_options.blob_url.empty() ? std::string("local") : registry_options.blob_url},
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
  // A push arrives at about a GiB a second into gRPC's receive buffers of a few MiB each. glibc
  // hands buffers that large out as fresh mmaps (and trims the heap as they are freed), so every
  // received page was faulted in, zeroed and unmapped again: page faults and unmap_page_range were
  // a tenth of the registry's CPU in a 1 GiB push (perf). Below these limits freed buffers are
  // reused (the CLI does the same for pulls: KeepLargeBuffersInTheHeap in registry_commands.cc).
  // Up to 80 MiB: an hf_xet upload's xorb bodies (up to 64 MiB each) are read whole, decompressed
  // and verified; mapped afresh for each, they cost a fifth of the registry's CPU for a 1 GiB
  // upload (3.2-3.3 against 2.5-2.6 s, 3 rounds each; peak RSS 200-220 against 360-390 MiB).
  mallopt(M_MMAP_THRESHOLD, 80 << 20);
  mallopt(M_TRIM_THRESHOLD, 256 << 20);
  return flotilla::ServiceMain(argc, argv, "registry", flotilla::registry::MakeRegistryBundle);
}
