// The C++ client against an in-process RegistryService: PushFolder (dedup on a second push) and
// PullToCache (directory named by the commit id, files verified, a second pull fetches nothing).
#include "services/registry/registry_client.h"

#include <fcntl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/xattr.h>

#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "flotilla/v1/registry.grpc.pb.h"
#include "services/registry/auth.h"
#include "services/registry/blob_store.h"
#include "services/registry/direct_writes.h"
#include "services/registry/registry.h"
#include "services/registry/registry_service.h"
#include "services/registry/remembered_digest.h"

namespace flotilla::registry {
namespace {

namespace fs = std::filesystem;

std::string TempDirectory() {
  std::string pattern = (fs::temp_directory_path() / "registry_client_test_XXXXXX").string();
  return mkdtemp(pattern.data());
}

void WriteFile(const fs::path& path, const std::string& content) {
  fs::create_directories(path.parent_path());
  std::ofstream(path, std::ios::binary) << content;
}

std::string ReadFile(const fs::path& path) {
  std::ifstream stream(path, std::ios::binary);
  std::stringstream buffer;
  buffer << stream.rdbuf();
  return buffer.str();
}

// A pull into `target` while no file may grow past `limit` bytes (RLIMIT_FSIZE): the disk "fills
// up" there, and the write that crosses it fails.
absl::StatusOr<PullResult> PullWithFileSizeLimit(RegistryClient& client, const std::string& reference,
                                                 const fs::path& target, rlim_t limit) {
  struct rlimit original;
  getrlimit(RLIMIT_FSIZE, &original);
  std::signal(SIGXFSZ, SIG_IGN);
  struct rlimit small = original;
  small.rlim_cur = limit;
  if (setrlimit(RLIMIT_FSIZE, &small) != 0) return absl::InternalError("setrlimit(RLIMIT_FSIZE) refused");
  auto pulled = client.PullToDirectory(reference, target.string());
  setrlimit(RLIMIT_FSIZE, &original);
  std::signal(SIGXFSZ, SIG_DFL);
  return pulled;
}

class RegistryClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = TempDirectory();
    RegistryOptions options;
    options.data_directory = root_ + "/data";
    registry_ = *Registry::Open(options);
    authorizer_ = *Authorizer::Create({}, true);
    service_ = MakeRegistryGrpcService(*registry_, authorizer_);
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(service_.get());
    server_ = builder.BuildAndStart();
    address_ = "127.0.0.1:" + std::to_string(port);
  }
  void TearDown() override {
    server_->Shutdown();
    fs::remove_all(root_);
  }

  std::string root_;
  std::unique_ptr<Registry> registry_;
  Authorizer authorizer_ = *Authorizer::Create({}, true);
  std::unique_ptr<grpc::Service> service_;
  std::unique_ptr<grpc::Server> server_;
  std::string address_;
};

TEST_F(RegistryClientTest, PushFolderThenPullToCache) {
  const fs::path source = root_ + "/source";
  const std::string weights(5 << 20, 'w');
  WriteFile(source / "config.json", "{\"model_type\": \"llama\"}");
  WriteFile(source / "shards" / "model-00001-of-00001.safetensors", weights);
  WriteFile(source / ".git" / "HEAD", "ignored");
  RegistryClient client(address_);
  int64_t last_done = 0;
  client.set_progress([&](const TransferProgress& progress) { last_done = progress.done_bytes; });
  auto pushed = client.PushFolder(source.string(), "acme", "llama", {.message = "v1"});
  ASSERT_TRUE(pushed.ok()) << pushed.status();
  EXPECT_EQ(pushed->files, 2);
  EXPECT_EQ(pushed->commit_id.size(), 40u);
  EXPECT_EQ(last_done, pushed->uploaded_bytes);
  auto again = client.PushFolder(source.string(), "acme", "llama");
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->uploaded_bytes, 0);

  const std::string cache = root_ + "/cache";
  auto directory = client.PullToCache("acme/llama@" + pushed->commit_id.substr(0, 10), cache);
  ASSERT_TRUE(directory.ok()) << directory.status();
  EXPECT_EQ(*directory, cache + "/acme/llama/" + pushed->commit_id);
  EXPECT_EQ(ReadFile(fs::path(*directory) / "shards" / "model-00001-of-00001.safetensors"), weights);
  EXPECT_FALSE(fs::exists(fs::path(*directory) / ".git"));

  // An interrupted earlier pull left a prefix: the next pull resumes and verifies it.
  const fs::path latest = cache + "/acme/llama/" + again->commit_id;
  WriteFile(latest / "shards" / "model-00001-of-00001.safetensors.incomplete", weights.substr(0, 1 << 20));
  auto resumed = client.PullToDirectory("acme/llama", latest.string());
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  EXPECT_EQ(resumed->downloaded_bytes, static_cast<int64_t>(weights.size() - (1 << 20)) + 23);
  EXPECT_EQ(ReadFile(latest / "shards" / "model-00001-of-00001.safetensors"), weights);

  // A corrupt prefix is caught by the sha256 check, removed, and reported.
  const fs::path corrupt = root_ + "/corrupt";
  WriteFile(corrupt / "config.json.incomplete", "XX");
  auto refused = client.PullToDirectory("acme/llama", corrupt.string());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_FALSE(fs::exists(corrupt / "config.json.incomplete"));

  EXPECT_EQ(client.PullToCache("acme/llama@nope", cache).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(client.PullToCache("acme/missing", cache).status().code(), absl::StatusCode::kNotFound);
}

// A file of many messages (more than the writer thread's queue holds), with bytes that differ
// everywhere, so chunks written out of order or twice would fail the sha256 check.
std::string DistinctBytes(size_t size) {
  std::mt19937_64 generator(7);
  std::string bytes(size, '\0');
  for (size_t at = 0; at + 8 <= size; at += 8) {
    const uint64_t value = generator();
    std::memcpy(bytes.data() + at, &value, 8);
  }
  return bytes;
}

TEST_F(RegistryClientTest, PullWritesAndHashesOnASecondThreadAndResumesAfterAWriteError) {
  const fs::path source = root_ + "/source";
  const std::string weights = DistinctBytes((40 << 20) + 12345);
  WriteFile(source / "model.safetensors", weights);
  RegistryClient client(address_);
  auto pushed = client.PushFolder(source.string(), "acme", "big");
  ASSERT_TRUE(pushed.ok()) << pushed.status();

  // The disk "fills up" after 8 MiB: the write error ends the pull, the bytes written stay.
  const fs::path target = root_ + "/target";
  const rlim_t limit = 8 << 20;
  auto failed = PullWithFileSizeLimit(client, "acme/big", target, limit);
  EXPECT_EQ(failed.status().code(), absl::StatusCode::kInternal) << failed.status();
  EXPECT_NE(failed.status().message().find("write("), std::string::npos) << failed.status();
  ASSERT_TRUE(fs::exists(target / "model.safetensors.incomplete"));
  EXPECT_EQ(fs::file_size(target / "model.safetensors.incomplete"), limit);

  // The next pull continues from there and verifies the whole file.
  auto resumed = client.PullToDirectory("acme/big", target.string());
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  EXPECT_EQ(resumed->downloaded_bytes, static_cast<int64_t>(weights.size() - limit));
  EXPECT_EQ(ReadFile(target / "model.safetensors"), weights);
  EXPECT_FALSE(fs::exists(target / "model.safetensors.incomplete"));

  // From scratch, and from an offset inside a message. (Note [Direct pull writes]: the pull from
  // 8 MiB and the one from scratch write through O_DIRECT, the one from an unaligned offset through
  // the page cache, and the disk-full pull above fell back to it when the direct write was refused.)
  const fs::path fresh = root_ + "/fresh";
  auto whole = client.PullToDirectory("acme/big", fresh.string());
  ASSERT_TRUE(whole.ok()) << whole.status();
  EXPECT_EQ(ReadFile(fresh / "model.safetensors"), weights);
  const fs::path odd = root_ + "/odd";
  WriteFile(odd / "model.safetensors.incomplete", weights.substr(0, (3 << 20) + 777));
  auto continued = client.PullToDirectory("acme/big", odd.string());
  ASSERT_TRUE(continued.ok()) << continued.status();
  EXPECT_EQ(ReadFile(odd / "model.safetensors"), weights);

  // Direct writes refused part-way (a filesystem that takes O_DIRECT at open but not at write): the
  // rest of the message in hand, and every later one, go through the page cache.
  DirectWriter::RefuseFromOffsetForTesting(12 << 20);
  const fs::path refused = root_ + "/refused";
  auto fallback = client.PullToDirectory("acme/big", refused.string());
  DirectWriter::RefuseFromOffsetForTesting(-1);
  ASSERT_TRUE(fallback.ok()) << fallback.status();
  EXPECT_EQ(ReadFile(refused / "model.safetensors"), weights);
}


// Note [Ranged pull]: a file of 64 MiB or more arrives over two streams of 16 MiB ranges and is
// written in order, so a pull stopped by a write error leaves a partial file without holes, and the
// resumed pull (ranges from an offset no range boundary shares) verifies the whole file.
TEST_F(RegistryClientTest, LargeFilePullsInRangesOverTwoStreamsAndResumesInOrder) {
  const fs::path source = root_ + "/source";
  const std::string weights = DistinctBytes((100 << 20) + 4321);
  WriteFile(source / "model.safetensors", weights);
  RegistryClient client(address_);
  auto pushed = client.PushFolder(source.string(), "acme", "ranged");
  ASSERT_TRUE(pushed.ok()) << pushed.status();

  const fs::path whole = root_ + "/whole";
  auto pulled = client.PullToDirectory("acme/ranged", whole.string());
  ASSERT_TRUE(pulled.ok()) << pulled.status();
  EXPECT_EQ(pulled->downloaded_bytes, static_cast<int64_t>(weights.size()));
  EXPECT_TRUE(ReadFile(whole / "model.safetensors") == weights);

  // The disk "fills up" at 24 MiB, inside the second range: the file holds exactly the bytes
  // before that point, whatever the other stream had received past it.
  const fs::path target = root_ + "/target";
  const rlim_t limit = 24 << 20;
  auto failed = PullWithFileSizeLimit(client, "acme/ranged", target, limit);
  EXPECT_EQ(failed.status().code(), absl::StatusCode::kInternal) << failed.status();
  const std::string partial = ReadFile(target / "model.safetensors.incomplete");
  ASSERT_EQ(partial.size(), limit);
  EXPECT_TRUE(partial == weights.substr(0, limit));

  auto resumed = client.PullToDirectory("acme/ranged", target.string());
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  EXPECT_EQ(resumed->downloaded_bytes, static_cast<int64_t>(weights.size() - limit));
  EXPECT_TRUE(ReadFile(target / "model.safetensors") == weights);
  EXPECT_FALSE(fs::exists(target / "model.safetensors.incomplete"));
}

// DownloadFile sends `length` bytes from `offset` (0: to the end), and refuses a negative length.
TEST_F(RegistryClientTest, DownloadFileSendsTheRangeAsked) {
  const fs::path source = root_ + "/source";
  const std::string weights = DistinctBytes((3 << 20) + 17);
  WriteFile(source / "model.safetensors", weights);
  RegistryClient client(address_);
  ASSERT_TRUE(client.PushFolder(source.string(), "acme", "range").ok());
  auto stub = flotilla::v1::RegistryService::NewStub(grpc::CreateChannel(address_, grpc::InsecureChannelCredentials()));
  auto download = [&](int64_t offset, int64_t length) -> absl::StatusOr<std::string> {
    grpc::ClientContext context;
    flotilla::v1::DownloadFileRequest request;
    request.mutable_reference()->set_namespace_("acme");
    request.mutable_reference()->set_name("range");
    request.mutable_reference()->set_revision("main");
    request.set_path("model.safetensors");
    request.set_offset(offset);
    request.set_length(length);
    auto reader = stub->DownloadFile(&context, request);
    flotilla::v1::DownloadFileResponse response;
    std::string bytes;
    while (reader->Read(&response)) bytes += response.data();
    grpc::Status status = reader->Finish();
    if (!status.ok()) return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
    return bytes;
  };
  auto middle = download((1 << 20) + 3, (1 << 20) + 5);
  ASSERT_TRUE(middle.ok()) << middle.status();
  EXPECT_TRUE(*middle == weights.substr((1 << 20) + 3, (1 << 20) + 5));
  auto past_the_end = download(3 << 20, 1 << 20);
  ASSERT_TRUE(past_the_end.ok()) << past_the_end.status();
  EXPECT_TRUE(*past_the_end == weights.substr(3 << 20));
  auto rest = download(5, 0);
  ASSERT_TRUE(rest.ok()) << rest.status();
  EXPECT_TRUE(*rest == weights.substr(5));
  auto negative = download(0, -1);
  EXPECT_EQ(negative.status().code(), absl::StatusCode::kInvalidArgument) << negative.status();
}

// Note [Remembered digests]: a pushed or pulled file keeps its sha256 in an extended attribute, so
// pushing it again, to any repository, sends nothing the registry holds and reads nothing; a changed
// file, a file written just before it was read, and a garbled attribute are hashed as before.
TEST_F(RegistryClientTest, RememberedDigestSkipsAStoredFileAndNeverOutlivesAChange) {
  const fs::path source = root_ + "/source";
  const fs::path weights_path = source / "model.safetensors";
  const std::string weights = DistinctBytes((12 << 20) + 99);
  WriteFile(weights_path, weights);
  auto set_age = [](const fs::path& path, int seconds_ago) {
    timespec times[2];
    clock_gettime(CLOCK_REALTIME, &times[0]);
    times[0].tv_sec -= seconds_ago;
    times[1] = times[0];
    ASSERT_EQ(utimensat(AT_FDCWD, path.c_str(), times, 0), 0);
  };
  set_age(weights_path, 3600);
  const std::string digest = *Sha256OfFile(weights_path.string());
  RegistryClient client(address_);

  // A path new to the registry: streamed while hashed (Note [Streamed push]), then remembered.
  auto first = client.PushFolder(source.string(), "acme", "one");
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(first->uploaded_bytes, static_cast<int64_t>(weights.size()));
  ASSERT_EQ(RememberedSha256(weights_path.string()), digest);

  // The same file into another repository: the registry holds the blob, nothing is sent.
  auto second = client.PushFolder(source.string(), "acme", "two");
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(second->uploaded_bytes, 0);
  EXPECT_EQ(second->skipped_bytes, static_cast<int64_t>(weights.size()));

  // A pulled file is remembered too, and pushes for free.
  const fs::path pulled = root_ + "/pulled";
  ASSERT_TRUE(client.PullToDirectory("acme/two", pulled.string()).ok());
  EXPECT_EQ(RememberedSha256((pulled / "model.safetensors").string()), digest);
  auto from_pull = client.PushFolder(pulled.string(), "acme", "three");
  ASSERT_TRUE(from_pull.ok()) << from_pull.status();
  EXPECT_EQ(from_pull->uploaded_bytes, 0);

  // New bytes of the same size, an older time than the recorded one: the attribute no longer
  // matches, and the push sends the changed chunk (Note [Same-size candidates] finds the rest).
  std::string changed = weights;
  changed[5 << 20] ^= 0x5a;
  WriteFile(weights_path, changed);
  set_age(weights_path, 1800);
  EXPECT_EQ(RememberedSha256(weights_path.string()), std::nullopt);
  auto after_change = client.PushFolder(source.string(), "acme", "four");
  ASSERT_TRUE(after_change.ok()) << after_change.status();
  EXPECT_GT(after_change->uploaded_bytes, 0);
  EXPECT_LT(after_change->uploaded_bytes, 1 << 20);
  const fs::path check = root_ + "/check";
  ASSERT_TRUE(client.PullToDirectory("acme/four", check.string()).ok());
  EXPECT_TRUE(ReadFile(check / "model.safetensors") == changed);

  // Written less than a second before it was read: a later write could keep its time, so the
  // digest is not recorded.
  const fs::path fresh = root_ + "/fresh";
  WriteFile(fresh / "model.safetensors", weights.substr(0, 9 << 20));
  ASSERT_TRUE(client.PushFolder(fresh.string(), "acme", "five").ok());
  EXPECT_EQ(RememberedSha256((fresh / "model.safetensors").string()), std::nullopt);

  // A garbled attribute is ignored.
  const std::string garbage = "not a digest 1 2";
  ASSERT_EQ(setxattr(weights_path.c_str(), "user.flotilla.sha256", garbage.data(), garbage.size(), 0), 0);
  EXPECT_EQ(RememberedSha256(weights_path.string()), std::nullopt);
}

// Note [Same-size candidates]: a fine-tuned checkpoint pushed into a new repository, whose base is
// stored only as a plain blob (streamed into another repository), sends and stores about its
// changed bytes, not the whole file.
TEST_F(RegistryClientTest, FineTunedCopyInANewRepositorySendsOnlyItsChangedChunks) {
  const fs::path base = root_ + "/base";
  const std::string weights = DistinctBytes((24 << 20) + 77);
  WriteFile(base / "model.safetensors", weights);
  RegistryClient client(address_);
  auto first = client.PushFolder(base.string(), "acme", "base");
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_EQ(first->uploaded_bytes, static_cast<int64_t>(weights.size()));  // streamed: a plain blob

  std::string tuned = weights;
  for (size_t index = 10 << 20; index < (11 << 20); ++index) tuned[index] = static_cast<char>(tuned[index] ^ 0x3c);
  const fs::path copy = root_ + "/tuned";
  WriteFile(copy / "model.safetensors", tuned);
  auto second = client.PushFolder(copy.string(), "other", "tuned");
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_LT(second->uploaded_bytes, 2 << 20) << "sent " << second->uploaded_bytes << " of " << tuned.size();

  const fs::path pulled = root_ + "/pulled";
  ASSERT_TRUE(client.PullToDirectory("other/tuned", pulled.string()).ok());
  EXPECT_TRUE(ReadFile(pulled / "model.safetensors") == tuned);
  const fs::path base_again = root_ + "/base_again";
  ASSERT_TRUE(client.PullToDirectory("acme/base", base_again.string()).ok());
  EXPECT_TRUE(ReadFile(base_again / "model.safetensors") == weights);
}

// A sharded checkpoint: its files download at once. While a pull runs, every file being fetched
// has its <file>.incomplete open; a pull one file at a time never shows two of them.
TEST_F(RegistryClientTest, ShardedCheckpointPullsItsFilesInParallelAndVerifiesEach) {
  const fs::path source = root_ + "/source";
  std::vector<std::string> shards;
  for (int index = 0; index < 4; ++index) {
    std::string bytes = DistinctBytes((6 << 20) + index * 1000);
    bytes[0] = static_cast<char>(index);  // four different blobs
    shards.push_back(bytes);
    WriteFile(source / ("model-0000" + std::to_string(index + 1) + "-of-00004.safetensors"), bytes);
  }
  WriteFile(source / "config.json", "{}");
  RegistryClient client(address_);
  ASSERT_TRUE(client.PushFolder(source.string(), "acme", "sharded").ok());

  const fs::path parallel = root_ + "/parallel";
  fs::create_directories(parallel);
  int most = 0;
  {
    size_t seen = 0;
    client.set_progress([&](const TransferProgress&) {
      size_t partial = 0;
      for (const auto& item : fs::recursive_directory_iterator(parallel)) partial += item.path().extension() == ".incomplete";
      seen = std::max(seen, partial);
    });
    auto pulled = client.PullToDirectory("acme/sharded", parallel.string());
    ASSERT_TRUE(pulled.ok()) << pulled.status();
    EXPECT_EQ(pulled->files, 5);
    most = static_cast<int>(seen);
  }
  EXPECT_GE(most, 2) << "the shards were fetched one after another";
  for (int index = 0; index < 4; ++index) {
    EXPECT_EQ(ReadFile(parallel / ("model-0000" + std::to_string(index + 1) + "-of-00004.safetensors")), shards[index]);
  }
  for (const auto& item : fs::recursive_directory_iterator(parallel)) EXPECT_NE(item.path().extension(), ".incomplete");

  // One at a time when asked.
  const fs::path serial = root_ + "/serial";
  fs::create_directories(serial);
  client.set_max_parallel_files(1);
  size_t seen = 0;
  client.set_progress([&](const TransferProgress&) {
    size_t partial = 0;
    for (const auto& item : fs::recursive_directory_iterator(serial)) partial += item.path().extension() == ".incomplete";
    seen = std::max(seen, partial);
  });
  ASSERT_TRUE(client.PullToDirectory("acme/sharded", serial.string()).ok());
  EXPECT_EQ(seen, 1u);

  // Two pulls of the same revision into the same folder at once (two workers sharing a cache):
  // each file is written by one of them at a time (flock), both succeed, the bytes are right.
  const fs::path shared = root_ + "/shared";
  client.set_max_parallel_files(4);
  client.set_progress(nullptr);
  absl::Status first;
  absl::Status second;
  std::thread other([&] { first = client.PullToDirectory("acme/sharded", shared.string()).status(); });
  second = client.PullToDirectory("acme/sharded", shared.string()).status();
  other.join();
  EXPECT_TRUE(first.ok()) << first;
  EXPECT_TRUE(second.ok()) << second;
  for (int index = 0; index < 4; ++index) {
    EXPECT_EQ(ReadFile(shared / ("model-0000" + std::to_string(index + 1) + "-of-00004.safetensors")), shards[index]);
  }
  for (const auto& item : fs::recursive_directory_iterator(shared)) EXPECT_NE(item.path().extension(), ".incomplete");
}

// A byte flipped in the registry's stored blob (disk corruption): the pull fails with DATA_LOSS,
// the file never appears under its name and the partial file is removed; the other shards of a
// parallel pull stay correct or absent, never half-written.
TEST_F(RegistryClientTest, CorruptedByteInTheStoredBlobIsDetectedAndNothingAppears) {
  const fs::path source = root_ + "/source";
  const std::string good = DistinctBytes(5 << 20);
  std::string bad = DistinctBytes(7 << 20);
  bad[0] = 'x';
  WriteFile(source / "good.safetensors", good);
  WriteFile(source / "bad.safetensors", bad);
  RegistryClient client(address_);
  ASSERT_TRUE(client.PushFolder(source.string(), "acme", "rot").ok());
  const std::string blob = registry_->blobs().LocalPath(Sha256OfString(bad));
  ASSERT_TRUE(fs::exists(blob)) << blob;
  fs::permissions(blob, fs::perms::owner_write, fs::perm_options::add);
  {
    std::fstream stream(blob, std::ios::in | std::ios::out | std::ios::binary);
    stream.seekp(3 << 20);
    stream.put(static_cast<char>(bad[3 << 20] ^ 0x01));
  }
  const fs::path target = root_ + "/target";
  auto pulled = client.PullToDirectory("acme/rot", target.string());
  ASSERT_EQ(pulled.status().code(), absl::StatusCode::kDataLoss) << pulled.status();
  EXPECT_NE(pulled.status().message().find("bad.safetensors"), std::string::npos) << pulled.status();
  EXPECT_FALSE(fs::exists(target / "bad.safetensors"));
  EXPECT_FALSE(fs::exists(target / "bad.safetensors.incomplete"));
  if (fs::exists(target / "good.safetensors")) EXPECT_EQ(ReadFile(target / "good.safetensors"), good);
}

}  // namespace
}  // namespace flotilla::registry
