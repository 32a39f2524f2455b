// Unit tests of the registry's core library: names and paths, the local blob store, the SQLite
// metadata store, and the Registry logic on top (resolution, commits, races, garbage collection).
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <utime.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <thread>

#include <absl/strings/match.h>
#include <gtest/gtest.h>

#include "services/registry/blob_store.h"
#include "services/registry/direct_writes.h"
#include "services/registry/metadata_store.h"
#include "services/registry/names.h"
#include "services/registry/registry.h"

namespace flotilla::registry {
namespace {

namespace fs = std::filesystem;

std::string TempDirectory() {
  std::string pattern = (fs::temp_directory_path() / "registry_test_XXXXXX").string();
  return mkdtemp(pattern.data());
}

TEST(NamesTest, RepositoryParts) {
  EXPECT_TRUE(ValidateRepositoryPart("acme", "namespace").ok());
  EXPECT_TRUE(ValidateRepositoryPart("Llama-3.1_8B", "name").ok());
  for (const char* bad : {"", "-x", "x-", ".x", "x.", "a--b", "a..b", "a/b", "a b", "ümlaut"}) {
    absl::Status status = ValidateRepositoryPart(bad, "name");
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  EXPECT_FALSE(ValidateRepositoryPart(std::string(97, 'a'), "name").ok());
}

TEST(NamesTest, Paths) {
  EXPECT_TRUE(ValidateRepositoryPath("config.json").ok());
  EXPECT_TRUE(ValidateRepositoryPath("build/torch2.15-cpu-x86_64/kernel.so").ok());
  EXPECT_TRUE(ValidateRepositoryPath("..hidden/a..b").ok());
  EXPECT_TRUE(absl::StrContains(ValidateRepositoryPath("a/../b").message(), "'..'"));
  EXPECT_TRUE(absl::StrContains(ValidateRepositoryPath("/etc/passwd").message(), "absolute"));
  EXPECT_TRUE(absl::StrContains(ValidateRepositoryPath(std::string("a\0b", 3)).message(), "NUL"));
  EXPECT_TRUE(absl::StrContains(ValidateRepositoryPath("a\\b").message(), "backslash"));
  EXPECT_TRUE(absl::StrContains(ValidateRepositoryPath("a//b").message(), "empty segment"));
  EXPECT_FALSE(ValidateRepositoryPath("a/").ok());
  EXPECT_FALSE(ValidateRepositoryPath("").ok());
  EXPECT_FALSE(ValidateRepositoryPath("./a").ok());
}

TEST(NamesTest, References) {
  auto reference = ParseReference("acme/llama@v1.0");
  ASSERT_TRUE(reference.ok());
  EXPECT_EQ(reference->namespace_name, "acme");
  EXPECT_EQ(reference->name, "llama");
  EXPECT_EQ(reference->revision, "v1.0");
  EXPECT_EQ(ParseReference("acme/llama")->revision, "");
  EXPECT_FALSE(ParseReference("llama").ok());
  EXPECT_FALSE(ParseReference("acme/llama@").ok());
  EXPECT_FALSE(ParseReference("ac me/llama").ok());
  EXPECT_TRUE(ValidateRefName("release/v1").ok());
  EXPECT_FALSE(ValidateRefName("a..b").ok());
  EXPECT_FALSE(ValidateRefName("-x").ok());
}

TEST(Sha256Test, KnownDigests) {
  EXPECT_EQ(Sha256OfString(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(Sha256OfString("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST(BlobStoreTest, UploadReadAndVerify) {
  auto store = LocalBlobStore::Open(TempDirectory());
  ASSERT_TRUE(store.ok());
  const std::string data = "hello blob";
  const std::string digest = Sha256OfString(data);
  auto upload = (*store)->BeginUpload(digest, data.size(), 0);
  ASSERT_TRUE(upload.ok()) << upload.status();
  ASSERT_TRUE((*upload)->Append(data.substr(0, 4)).ok());
  ASSERT_TRUE((*upload)->Append(data.substr(4)).ok());
  ASSERT_TRUE((*upload)->Finish().ok());
  upload->reset();
  EXPECT_EQ(*(*store)->Size(digest), static_cast<int64_t>(data.size()));
  std::string read;
  ASSERT_TRUE((*store)->Read(digest, 6, 100, &read).ok());
  EXPECT_EQ(read, "blob");
  EXPECT_EQ((*store)->BeginUpload(digest, data.size(), 0).status().code(), absl::StatusCode::kAlreadyExists);
}

TEST(BlobStoreTest, MismatchedDigestStoresNothing) {
  auto store = LocalBlobStore::Open(TempDirectory());
  const std::string claimed = Sha256OfString("the real bytes");
  auto upload = (*store)->BeginUpload(claimed, 5, 0);
  ASSERT_TRUE(upload.ok());
  ASSERT_TRUE((*upload)->Append("other").ok());
  absl::Status finished = (*upload)->Finish();
  EXPECT_EQ(finished.code(), absl::StatusCode::kDataLoss);
  EXPECT_TRUE(absl::StrContains(finished.message(), Sha256OfString("other")));
  upload->reset();
  EXPECT_EQ((*store)->Size(claimed).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ((*store)->PartialSize(claimed), 0);
}

// Note [Streamed push]: an upload held under a StreamedUploadKey appears under the sha256 named at
// the end, only if its bytes hash to it; the key is the same for one repository and id, and
// differs across repositories.
TEST(BlobStoreTest, StreamedUploadIsNamedByItsDigestAtTheEnd) {
  auto store = LocalBlobStore::Open(TempDirectory());
  ASSERT_TRUE(store.ok());
  const std::string key = StreamedUploadKey("acme", "model", "push-1");
  EXPECT_EQ(key, StreamedUploadKey("acme", "model", "push-1"));
  EXPECT_NE(key, StreamedUploadKey("acme", "other", "push-1"));
  EXPECT_TRUE(ValidateSha256(key).ok());
  EXPECT_TRUE(ValidateUploadId("push-0123abcd.x_y").ok());
  for (const std::string& bad : std::vector<std::string>{"", std::string(129, 'a'), "a/b", "white space"}) {
    EXPECT_EQ(ValidateUploadId(bad).code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  const std::string bytes(3 << 20, 'w');
  const std::string digest = Sha256OfString(bytes);
  {
    auto upload = (*store)->BeginUpload(key, static_cast<int64_t>(bytes.size()), 0);
    ASSERT_TRUE(upload.ok()) << upload.status();
    ASSERT_TRUE((*upload)->Append(bytes).ok());
    absl::Status finished = (*upload)->FinishAs(Sha256OfString("something else"));
    EXPECT_EQ(finished.code(), absl::StatusCode::kDataLoss) << finished;
    EXPECT_TRUE(absl::StrContains(finished.message(), digest)) << finished;
  }
  EXPECT_EQ((*store)->Size(digest).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ((*store)->PartialSize(key), 0);
  // Interrupted, resumed, then named.
  {
    auto upload = (*store)->BeginUpload(key, static_cast<int64_t>(bytes.size()), 0);
    ASSERT_TRUE(upload.ok());
    ASSERT_TRUE((*upload)->Append(absl::string_view(bytes).substr(0, 1 << 20)).ok());
    ASSERT_TRUE((*upload)->Sync().ok());
  }
  EXPECT_EQ((*store)->PartialSize(key), 1 << 20);
  auto resumed = (*store)->BeginUpload(key, static_cast<int64_t>(bytes.size()), 1 << 20);
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  ASSERT_TRUE((*resumed)->Append(absl::string_view(bytes).substr(1 << 20)).ok());
  ASSERT_TRUE((*resumed)->FinishAs(digest).ok());
  resumed->reset();
  EXPECT_EQ(*(*store)->Size(digest), static_cast<int64_t>(bytes.size()));
  EXPECT_EQ((*store)->PartialSize(key), 0);
  std::string read_back;
  ASSERT_TRUE((*store)->Read(digest, 0, static_cast<int64_t>(bytes.size()), &read_back).ok());
  EXPECT_EQ(read_back, bytes);
}

// Note [Direct upload writes]: a large upload gathered into aligned buffers and written with
// O_DIRECT (the unaligned tail buffered) reads back byte for byte, also when it is abandoned at an
// unaligned offset and resumed (then buffered) from a restarted store.
TEST(BlobStoreTest, LargeUploadsWrittenDirectlyReadBackAndResume) {
  const std::string root = TempDirectory();
  std::string data(40 * 1024 * 1024 + 4321, '\0');
  uint64_t state = 88172645463325252ull;
  for (char& byte : data) {
    state ^= state << 13, state ^= state >> 7, state ^= state << 17;
    byte = static_cast<char>(state);
  }
  const std::string digest = Sha256OfString(data);
  const size_t interrupted_at = 21 * 1024 * 1024 + 999;  // past two whole 8 MiB buffers
  {
    auto store = LocalBlobStore::Open(root);
    auto upload = (*store)->BeginUpload(digest, data.size(), 0);
    ASSERT_TRUE(upload.ok()) << upload.status();
    for (size_t offset = 0; offset < interrupted_at;) {
      const size_t piece = std::min<size_t>(1000003, interrupted_at - offset);  // odd sizes
      ASSERT_TRUE((*upload)->Append(absl::string_view(data).substr(offset, piece)).ok());
      offset += piece;
    }
    // Abandoned, as when the client disconnects: every byte received is kept for resume.
  }
  auto store = LocalBlobStore::Open(root);
  ASSERT_EQ((*store)->PartialSize(digest), static_cast<int64_t>(interrupted_at));
  auto resumed = (*store)->BeginUpload(digest, data.size(), interrupted_at);
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  ASSERT_TRUE((*resumed)->Append(absl::string_view(data).substr(interrupted_at)).ok());
  ASSERT_TRUE((*resumed)->Finish().ok());
  resumed->reset();
  std::string read;
  ASSERT_TRUE((*store)->Read(digest, 0, data.size(), &read).ok());
  EXPECT_TRUE(read == data);

  // One upload start to finish, in 1 MiB messages (as `flotilla push` sends them).
  const std::string other = data.substr(7);
  const std::string other_digest = Sha256OfString(other);
  auto upload = (*store)->BeginUpload(other_digest, other.size(), 0);
  ASSERT_TRUE(upload.ok());
  for (size_t offset = 0; offset < other.size(); offset += 1 << 20) {
    ASSERT_TRUE((*upload)->Append(absl::string_view(other).substr(offset, 1 << 20)).ok());
  }
  ASSERT_TRUE((*upload)->Finish().ok());
  upload->reset();
  read.clear();
  ASSERT_TRUE((*store)->Read(other_digest, 0, other.size(), &read).ok());
  EXPECT_TRUE(read == other);
  EXPECT_EQ(Sha256OfFile((*store)->BlobPath(other_digest)).value(), other_digest);
}

// The direct-write mechanism under both (services/registry/direct_writes.h): a file written
// through it reads back byte for byte; small or unaligned writes never go direct; and a direct
// write the kernel refuses (here: at an unaligned offset, which O_DIRECT rejects with EINVAL) loses
// nothing — its bytes go through the page cache and the writer turns itself off.
TEST(DirectWriterTest, WritesEveryByteAndFallsBackWhenRefused) {
  const std::string root = TempDirectory();
  std::string data(3 * DirectWriter::kBufferBytes + 777, '\0');
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>((i * 2654435761u) >> 13);
  const auto read_file = [](const std::string& path) {
    std::ifstream file(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(file), {});
  };

  ASSERT_TRUE(WriteFileDurably(root + "/durable", data).ok());
  EXPECT_TRUE(read_file(root + "/durable") == data);

  EXPECT_FALSE(DirectWriter(root + "/durable", 0, DirectWriter::kMinimumBytes - 1, 1).active());
  EXPECT_FALSE(DirectWriter(root + "/durable", 512, DirectWriter::kMinimumBytes, 1).active());

  const std::string path = root + "/refused";
  const int descriptor = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  ASSERT_GE(descriptor, 0);
  DirectWriter direct(path, 0, static_cast<int64_t>(data.size()), /*buffer_count=*/1);
  ASSERT_TRUE(direct.active());
  std::memcpy(direct.buffer(0), data.data(), DirectWriter::kBufferBytes);
  ASSERT_TRUE(direct.Write(descriptor, direct.buffer(0), DirectWriter::kBufferBytes - 5, 0).ok());
  EXPECT_TRUE(direct.active());  // the aligned head went direct, the 4091-byte tail buffered
  const int64_t offset = DirectWriter::kBufferBytes - 5;
  std::memcpy(direct.buffer(0), data.data() + offset, DirectWriter::kBufferBytes);
  ASSERT_TRUE(direct.Write(descriptor, direct.buffer(0), DirectWriter::kBufferBytes, offset).ok());
  EXPECT_FALSE(direct.active());  // refused at the unaligned offset
  const int64_t written = offset + DirectWriter::kBufferBytes;
  ASSERT_TRUE(WriteAll(descriptor, data.data() + written, static_cast<int64_t>(data.size()) - written, written, path)
                  .ok());
  close(descriptor);
  EXPECT_TRUE(read_file(path) == data);
}

// A direct write refused part-way through an upload (a filesystem that takes O_DIRECT at open but
// not at write, a full disk): the rest of that message and every later one go through the page
// cache, and the blob is whole.
TEST(BlobStoreTest, UploadFallsBackToBufferedWritesWhenADirectWriteIsRefused) {
  struct Restore {
    ~Restore() { DirectWriter::RefuseFromOffsetForTesting(-1); }
  } restore;
  DirectWriter::RefuseFromOffsetForTesting(12 << 20);
  auto store = LocalBlobStore::Open(TempDirectory());
  std::string data((40 << 20) + 4321, '\0');
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>((i * 2654435761u) >> 11);
  const std::string digest = Sha256OfString(data);
  auto upload = (*store)->BeginUpload(digest, data.size(), 0);
  ASSERT_TRUE(upload.ok()) << upload.status();
  // One 20 MiB message: its second buffer (8-16 MiB) is refused with 4 MiB of the message to go.
  ASSERT_TRUE((*upload)->Append(absl::string_view(data).substr(0, 20 << 20)).ok());
  ASSERT_TRUE((*upload)->Append(absl::string_view(data).substr(20 << 20)).ok());
  ASSERT_TRUE((*upload)->Finish().ok());
  upload->reset();
  std::string read;
  ASSERT_TRUE((*store)->Read(digest, 0, static_cast<int64_t>(data.size()), &read).ok());
  EXPECT_TRUE(read == data);
}

TEST(BlobStoreTest, ChunkPastAnnouncedSize) {
  auto store = LocalBlobStore::Open(TempDirectory());
  auto upload = (*store)->BeginUpload(Sha256OfString("abc"), 3, 0);
  EXPECT_EQ((*upload)->Append("abcd").code(), absl::StatusCode::kOutOfRange);
}

TEST(BlobStoreTest, ResumeAfterInterruption) {
  const std::string root = TempDirectory();
  auto store = LocalBlobStore::Open(root);
  const std::string data(3 << 20, 'x');
  const std::string digest = Sha256OfString(data);
  {
    auto upload = (*store)->BeginUpload(digest, data.size(), 0);
    ASSERT_TRUE((*upload)->Append(absl::string_view(data).substr(0, 1 << 20)).ok());
    // Abandoned: destroyed without Finish, as when the client disconnects.
  }
  EXPECT_EQ((*store)->PartialSize(digest), 1 << 20);
  // Another upload of the same digest is refused while one is active; none is active now.
  EXPECT_EQ((*store)->BeginUpload(digest, data.size(), 5).status().code(), absl::StatusCode::kFailedPrecondition);
  // A fresh store (a restarted registry) still resumes.
  auto reopened = LocalBlobStore::Open(root);
  EXPECT_EQ((*reopened)->removed_stale_partials(), 0);
  auto resumed = (*reopened)->BeginUpload(digest, data.size(), 1 << 20);
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  EXPECT_EQ((*resumed)->committed_size(), 1 << 20);
  EXPECT_EQ((*reopened)->BeginUpload(digest, data.size(), 0).status().code(), absl::StatusCode::kUnavailable);
  ASSERT_TRUE((*resumed)->Append(absl::string_view(data).substr(1 << 20)).ok());
  ASSERT_TRUE((*resumed)->Finish().ok());
  EXPECT_EQ(*(*reopened)->Size(digest), static_cast<int64_t>(data.size()));
}

TEST(BlobStoreTest, StalePartialsRemovedAtOpen) {
  const std::string root = TempDirectory();
  auto store = LocalBlobStore::Open(root);
  const std::string digest = Sha256OfString("stale");
  { (*store)->BeginUpload(digest, 5, 0).value()->Append("st").IgnoreError(); }
  EXPECT_EQ((*store)->PartialSize(digest), 2);
  auto reopened = LocalBlobStore::Open(root, absl::ZeroDuration());
  EXPECT_EQ((*reopened)->removed_stale_partials(), 1);
  EXPECT_EQ((*reopened)->PartialSize(digest), 0);
}

TEST(CommitIdTest, MatchesGit) {
  // `git hash-object -t commit --stdin --literally` of the same commit text gives this id.
  const std::string id = ComputeCommitId("4b825dc642cb6eb9a060e54bf8d69288fbee4904", {}, "alice", 1700000000, "init");
  EXPECT_EQ(id, "4ee2f224ffc3fc1eff32bb973e0b7740394b83d0");
}

std::unique_ptr<Registry> OpenRegistry(const std::string& root, absl::Duration grace = absl::Minutes(10)) {
  RegistryOptions options;
  options.data_directory = root;
  options.garbage_grace_period = grace;
  auto registry = Registry::Open(options);
  EXPECT_TRUE(registry.ok()) << registry.status();
  return *std::move(registry);
}

TreeEntry Store(Registry& registry, const std::string& path, const std::string& data) {
  const std::string digest = Sha256OfString(data);
  auto upload = registry.blobs().BeginUpload(digest, data.size(), 0);
  if (upload.ok()) {
    EXPECT_TRUE((*upload)->Append(data).ok());
    EXPECT_TRUE((*upload)->Finish().ok());
  }
  return TreeEntry{path, static_cast<int64_t>(data.size()), digest};
}

TEST(MetadataStoreTest, RepositoriesPagingAndDelete) {
  auto store = SqlMetadataStore::Open(TempDirectory() + "/metadata.sqlite3");
  ASSERT_TRUE(store.ok());
  for (const char* name : {"alpha", "beta", "gamma"}) ASSERT_TRUE((*store)->CreateRepository("acme", name, 1, false).ok());
  EXPECT_EQ((*store)->CreateRepository("acme", "beta", 1, false).status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_TRUE((*store)->CreateRepository("acme", "beta", 2, true).ok());
  auto first = (*store)->ListRepositories("", 0, 2, "");
  ASSERT_EQ(first->size(), 2u);
  auto second = (*store)->ListRepositories("", 0, 2, "acme/beta");
  ASSERT_EQ(second->size(), 1u);
  EXPECT_EQ(second->front().name, "gamma");
  EXPECT_EQ((*store)->ListRepositories("amm", 0, 10, "")->size(), 1u);
  ASSERT_TRUE((*store)->DeleteRepository("acme", "gamma").ok());
  EXPECT_EQ((*store)->GetRepository("acme", "gamma").status().code(), absl::StatusCode::kNotFound);
}

TEST(RegistryTest, CommitResolveAndHistory) {
  auto registry = OpenRegistry(TempDirectory());
  ASSERT_TRUE(registry->CreateRepository("acme", "tiny", 1, false).ok());
  EXPECT_EQ(registry->Resolve("acme", "tiny", "").status().code(), absl::StatusCode::kNotFound);
  auto first = registry->CreateCommit("acme", "tiny", "main", std::string(), "alice", "one",
                                      {Store(*registry, "config.json", "{}")});
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(first->commit_id.size(), 40u);
  auto second = registry->CreateCommit("acme", "tiny", "main", first->commit_id, "alice", "two",
                                       {Store(*registry, "config.json", "{\"a\":1}"), Store(*registry, "w/x.bin", "x")});
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(second->parent_ids, std::vector<std::string>{first->commit_id});
  EXPECT_EQ(registry->Resolve("acme", "tiny", "main")->commit_id, second->commit_id);
  EXPECT_EQ(registry->Resolve("acme", "tiny", first->commit_id.substr(0, 7))->commit_id, first->commit_id);
  ASSERT_TRUE(registry->CreateTag("acme", "tiny", first->commit_id, "v1").ok());
  EXPECT_EQ(registry->Resolve("acme", "tiny", "v1")->commit_id, first->commit_id);
  absl::Status missing = registry->Resolve("acme", "tiny", "nope").status();
  EXPECT_EQ(missing.code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(absl::StrContains(missing.message(), "branches: main; tags: v1")) << missing;
  EXPECT_EQ(registry->Files(*first)->size(), 1u);
  EXPECT_EQ(registry->Files(*second)->size(), 2u);
  auto log = registry->Log("acme", "tiny", "main", 10);
  ASSERT_EQ(log->size(), 2u);
  EXPECT_EQ((*log)[1].commit_id, first->commit_id);
}

TEST(RegistryTest, RejectsBadTreesAndMissingBlobs) {
  auto registry = OpenRegistry(TempDirectory());
  ASSERT_TRUE(registry->CreateRepository("acme", "tiny", 1, false).ok());
  TreeEntry good = Store(*registry, "a", "a");
  for (const char* bad : {"../etc/passwd", "/abs", "a\\b"}) {
    TreeEntry entry = good;
    entry.path = bad;
    EXPECT_EQ(registry->CreateCommit("acme", "tiny", "main", std::nullopt, "a", "m", {entry}).status().code(),
              absl::StatusCode::kInvalidArgument) << bad;
  }
  TreeEntry absent{"b", 1, Sha256OfString("b")};
  EXPECT_EQ(registry->CreateCommit("acme", "tiny", "main", std::nullopt, "a", "m", {absent}).status().code(),
            absl::StatusCode::kFailedPrecondition);
  TreeEntry wrong_size = good;
  wrong_size.size = 7;
  EXPECT_EQ(registry->CreateCommit("acme", "tiny", "main", std::nullopt, "a", "m", {wrong_size}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(registry->CreateCommit("acme", "missing", "main", std::nullopt, "a", "m", {good}).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(registry->Resolve("acme", "tiny", "").status().code(), absl::StatusCode::kNotFound);
}

TEST(RegistryTest, RacingPushesOneWinsOtherAborted) {
  auto registry = OpenRegistry(TempDirectory());
  ASSERT_TRUE(registry->CreateRepository("acme", "race", 1, false).ok());
  auto base = registry->CreateCommit("acme", "race", "main", std::string(), "a", "base", {Store(*registry, "f", "0")});
  std::vector<TreeEntry> trees[8];
  for (int i = 0; i < 8; ++i) trees[i] = {Store(*registry, "f", std::to_string(i + 1))};
  std::vector<absl::StatusOr<CommitRecord>> results(8, absl::UnknownError(""));
  std::vector<std::thread> threads;
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&, i] {
      results[i] = registry->CreateCommit("acme", "race", "main", base->commit_id, "a", "racer", trees[i]);
    });
  }
  for (auto& thread : threads) thread.join();
  int winners = 0;
  std::string winner;
  for (auto& result : results) {
    if (result.ok()) {
      ++winners;
      winner = result->commit_id;
    }
  }
  ASSERT_EQ(winners, 1);
  for (auto& result : results) {
    if (result.ok()) continue;
    EXPECT_EQ(result.status().code(), absl::StatusCode::kAborted);
    EXPECT_TRUE(absl::StrContains(result.status().message(), winner)) << result.status();
  }
  EXPECT_EQ(registry->Resolve("acme", "race", "main")->commit_id, winner);
}

TEST(RegistryTest, GarbageCollectionKeepsReferencedAndYoungBlobs) {
  const std::string root = TempDirectory();
  auto registry = OpenRegistry(root, absl::ZeroDuration());
  ASSERT_TRUE(registry->CreateRepository("acme", "gc", 1, false).ok());
  TreeEntry kept = Store(*registry, "kept", "kept bytes");
  TreeEntry dropped = Store(*registry, "dropped", "dropped bytes");
  ASSERT_TRUE(registry->CreateCommit("acme", "gc", "main", std::nullopt, "a", "m", {kept}).ok());
  auto dry = registry->CollectGarbage(true);
  EXPECT_EQ(dry->deleted_blobs, 1);
  EXPECT_TRUE(registry->blobs().Size(dropped.sha256).ok());
  auto report = registry->CollectGarbage(false);
  EXPECT_EQ(report->deleted_blobs, 1);
  EXPECT_EQ(report->freed_bytes, dropped.size);
  EXPECT_FALSE(registry->blobs().Size(dropped.sha256).ok());
  EXPECT_TRUE(registry->blobs().Size(kept.sha256).ok());

  // With a grace period, a just-uploaded (or just-touched) unreferenced blob survives.
  auto patient = OpenRegistry(root, absl::Minutes(10));
  TreeEntry young = Store(*patient, "young", "young bytes");
  EXPECT_EQ(patient->CollectGarbage(false)->deleted_blobs, 0);
  // Deleting the repository makes its blobs garbage once past the grace period.
  ASSERT_TRUE(registry->DeleteRepository("acme", "gc").ok());
  EXPECT_EQ(registry->CollectGarbage(false)->deleted_blobs, 2);
  EXPECT_FALSE(registry->blobs().Size(young.sha256).ok());
}

constexpr char kKernelManifest[] = R"({"name": "rmsnorm", "variants": {
  "torch2.15-cpu-x86_64": {"library": "librmsnorm.so"},
  "torch2.15-cu130-x86_64": {"library": "librmsnorm.so", "cuda_capabilities": ["8.0", "9.0"], "flags": "-O3"}}})";

TEST(RegistryTest, KernelVariantsFollowTheManifest) {
  auto registry = OpenRegistry(TempDirectory());
  ASSERT_TRUE(registry->CreateRepository("acme", "rmsnorm", 3, false).ok());
  ASSERT_TRUE(registry->CreateCommit("acme", "rmsnorm", "main", std::nullopt, "a", "m",
                                     {Store(*registry, "kernel.json", kKernelManifest),
                                      Store(*registry, "build/torch2.15-cpu-x86_64/librmsnorm.so", "cpu"),
                                      Store(*registry, "build/torch2.15-cu130-x86_64/librmsnorm.so", "cuda"),
                                      Store(*registry, "build/torch2.15-cu130-x86_64/kernels.ptx", "ptx"),
                                      Store(*registry, "README.md", "#")}).ok());
  auto variant = registry->FindKernelVariant("acme", "rmsnorm", "", "2.15", "cpu", "x86_64");
  ASSERT_TRUE(variant.ok()) << variant.status();
  EXPECT_EQ(variant->variant, "torch2.15-cpu-x86_64");
  EXPECT_EQ(variant->library, "build/torch2.15-cpu-x86_64/librmsnorm.so");
  ASSERT_EQ(variant->files.size(), 1u);
  auto cuda = registry->FindKernelVariant("acme", "rmsnorm", "", "torch2.15", "cu130", "x86_64", "9.0");
  ASSERT_TRUE(cuda.ok()) << cuda.status();
  EXPECT_EQ(cuda->files.size(), 2u);
  EXPECT_TRUE(absl::StrContains(cuda->entry_json, "\"flags\":\"-O3\"")) << cuda->entry_json;
  absl::Status old_gpu = registry->FindKernelVariant("acme", "rmsnorm", "", "2.15", "cu130", "x86_64", "7.5").status();
  EXPECT_EQ(old_gpu.code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(absl::StrContains(old_gpu.message(), "compute capabilities 8.0, 9.0, not 7.5")) << old_gpu;
  absl::Status missing = registry->FindKernelVariant("acme", "rmsnorm", "", "2.15", "cpu", "aarch64").status();
  EXPECT_EQ(missing.code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(absl::StrContains(missing.message(), "torch2.15-cpu-x86_64, torch2.15-cu130-x86_64")) << missing;
}

TEST(RegistryTest, KernelCommitsNeedAManifestThatMatchesTheTree) {
  auto registry = OpenRegistry(TempDirectory());
  ASSERT_TRUE(registry->CreateRepository("acme", "rmsnorm", 3, false).ok());
  auto refused = [&](std::vector<TreeEntry> files, const std::string& words) {
    absl::Status status = registry->CreateCommit("acme", "rmsnorm", "main", std::nullopt, "a", "m", std::move(files)).status();
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
    EXPECT_TRUE(absl::StrContains(status.message(), words)) << status;
  };
  refused({Store(*registry, "build/torch2.15-cpu-x86_64/librmsnorm.so", "cpu")}, "needs a kernel.json");
  refused({Store(*registry, "kernel.json", "{not json")}, "kernel.json: not valid JSON");
  refused({Store(*registry, "kernel.json", R"({"name": "k", "variants": {"cpu-build": {"library": "a.so"}}})")},
          "the name must be torch<major.minor>");
  refused({Store(*registry, "kernel.json", R"({"name": "k", "variants": {"torch2.15-cpu-x86_64": {"library": "../a.so"}}})")},
          "\"library\"");
  refused({Store(*registry, "kernel.json", kKernelManifest),
           Store(*registry, "build/torch2.15-cpu-x86_64/librmsnorm.so", "cpu")},
          "whose library build/torch2.15-cu130-x86_64/librmsnorm.so is not in the commit");
  refused({Store(*registry, "kernel.json", R"({"name": "k", "variants": {"torch2.15-cpu-x86_64": {"library": "a.so"}}})"),
           Store(*registry, "build/torch2.15-cpu-x86_64/a.so", "cpu"),
           Store(*registry, "build/torch2.14-cpu-x86_64/a.so", "old")},
          "does not list: torch2.14-cpu-x86_64");
  // A model repository needs no manifest.
  ASSERT_TRUE(registry->CreateRepository("acme", "model", 1, false).ok());
  EXPECT_TRUE(registry->CreateCommit("acme", "model", "main", std::nullopt, "a", "m",
                                     {Store(*registry, "build/anything/x.bin", "x")}).ok());
}

}  // namespace
}  // namespace flotilla::registry
