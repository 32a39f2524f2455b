// Test-only: a throwaway PostgreSQL 15 server for unit tests of the registry's PostgreSQL backend.
// Under ctest one server serves every test process (a CTest fixture runs postgres_test_server.sh
// and names its folder in $FLOTILLA_TEST_POSTGRES_DIR); a test binary run by hand starts its own
// (initdb into a temp folder, unix socket only, fsync off: about two seconds) and stops it at exit.
// Each caller gets a fresh, empty database.
//
//   std::optional<std::string> url = PostgresTestServer::NewDatabase();   // nullopt: no server
//   if (!url) GTEST_SKIP() << PostgresTestServer::unavailable_reason();
//   auto store = SqlMetadataStore::Open(*url);
//
// PostgreSQL refuses to run as root, so as root (CI containers) the server runs as the `postgres`
// user that Debian's package creates; the tests connect as its superuser "flotilla" over the socket.
// Thread-safe.
#pragma once

#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <mutex>
#include <optional>
#include <string>

#include <absl/strings/str_cat.h>

namespace flotilla::registry {

class PostgresTestServer {
 public:
  static constexpr char kBinaries[] = "/usr/lib/postgresql/15/bin";

  static std::optional<std::string> NewDatabase() {
    PostgresTestServer& server = Instance();
    if (server.directory_.empty()) return std::nullopt;
    static std::atomic<int> counter{0};
    const std::string name = absl::StrCat("test_", getpid(), "_", counter++);
    if (!Run(absl::StrCat(kBinaries, "/createdb -h ", server.directory_, " -U flotilla ", name))) return std::nullopt;
    return absl::StrCat("postgresql:///", name, "?host=", server.directory_, "&user=flotilla");
  }
  static const std::string& unavailable_reason() { return Instance().reason_; }

 private:
  static bool Run(const std::string& command) { return std::system((command + " >/dev/null 2>&1").c_str()) == 0; }

  static PostgresTestServer& Instance() {
    static PostgresTestServer server;
    return server;
  }

  PostgresTestServer() {
    if (const char* shared = std::getenv("FLOTILLA_TEST_POSTGRES_DIR");
        shared != nullptr && std::filesystem::exists(absl::StrCat(shared, "/.s.PGSQL.5432"))) {
      directory_ = shared;  // the fixture's server; the fixture stops it
      return;
    }
    if (!std::filesystem::exists(absl::StrCat(kBinaries, "/initdb"))) {
      reason_ = absl::StrCat("PostgreSQL 15 is not installed (", kBinaries, "/initdb is missing)");
      return;
    }
    std::string pattern = "/tmp/flotilla-pg-XXXXXX";
    const std::string directory = mkdtemp(pattern.data());
    const std::string as_user = geteuid() == 0 ? "runuser -u postgres -- " : "";
    if (geteuid() == 0) Run("chown postgres " + directory);
    if (!Run(absl::StrCat(as_user, kBinaries, "/initdb -D ", directory, "/data -A trust -U flotilla --no-sync")) ||
        !Run(absl::StrCat(as_user, kBinaries, "/pg_ctl -D ", directory, "/data -l ", directory,
                          "/server.log -w -o \"-k ", directory,
                          " -c listen_addresses='' -c fsync=off -c max_connections=200\" start"))) {
      reason_ = absl::StrCat("could not start PostgreSQL in ", directory, " (see its server.log)");
      return;
    }
    directory_ = directory;
    stop_command_ = absl::StrCat(as_user, kBinaries, "/pg_ctl -D ", directory, "/data -m immediate stop");
  }
  ~PostgresTestServer() {
    if (stop_command_.empty()) return;
    Run(stop_command_);
    std::error_code error;
    std::filesystem::remove_all(directory_, error);
  }

  std::string directory_;
  std::string stop_command_;
  std::string reason_;
};

}  // namespace flotilla::registry
