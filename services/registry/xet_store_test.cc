// The Xet CAS store and object formats: verified xorbs and shards, reconstructions with ranges,
// the blob view, tokens, dedup shards and garbage collection, on a temporary data directory, with
// the tables in SQLite and in PostgreSQL.
#include "services/registry/xet_store.h"

#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include <absl/time/clock.h>
#include <gtest/gtest.h>
#include <lz4frame.h>

#include "services/registry/blob_store.h"
#include "services/registry/postgres_test_server.h"
#include "services/registry/xet_chunker.h"
#include "services/registry/xet_format.h"
#include "services/registry/xet_hash.h"

namespace flotilla::registry {
namespace {

std::string RandomBytes(size_t size, uint32_t seed) {
  std::mt19937 generator(seed);
  std::string bytes(size, '\0');
  for (char& byte : bytes) byte = static_cast<char>(generator());
  return bytes;
}

void AppendUint32(std::string* out, uint32_t value) { out->append(reinterpret_cast<const char*>(&value), 4); }
void AppendUint64(std::string* out, uint64_t value) { out->append(reinterpret_cast<const char*>(&value), 8); }
void AppendHash(std::string* out, const XetHash& hash) { out->append(reinterpret_cast<const char*>(hash.data()), 32); }

struct TestXorb {
  XetHash hash;
  std::string serialized;
  std::vector<std::string> chunks;
};

TestXorb MakeXorb(const std::vector<std::string>& chunks) {
  TestXorb xorb;
  xorb.chunks = chunks;
  std::vector<uint64_t> ends;
  std::string data;
  std::vector<XetHashAndSize> leaves;
  for (const std::string& chunk : chunks) {
    data += chunk;
    ends.push_back(data.size());
    leaves.push_back({XetChunkHash(chunk), chunk.size()});
  }
  xorb.hash = XetXorbHash(leaves);
  xorb.serialized = WriteUncompressedXorb(data, ends);
  return xorb;
}

// A xorb whose chunks are LZ4 frames (compression type 1), as hf_xet stores compressible chunks.
TestXorb MakeCompressedXorb(const std::vector<std::string>& chunks) {
  TestXorb xorb;
  xorb.chunks = chunks;
  std::vector<XetHashAndSize> leaves;
  for (const std::string& chunk : chunks) {
    std::string frame(LZ4F_compressFrameBound(chunk.size(), nullptr), '\0');
    frame.resize(LZ4F_compressFrame(frame.data(), frame.size(), chunk.data(), chunk.size(), nullptr));
    const uint32_t packed = static_cast<uint32_t>(frame.size());
    const uint32_t unpacked = static_cast<uint32_t>(chunk.size());
    const char header[8] = {0, static_cast<char>(packed), static_cast<char>(packed >> 8), static_cast<char>(packed >> 16),
                            1, static_cast<char>(unpacked), static_cast<char>(unpacked >> 8), static_cast<char>(unpacked >> 16)};
    xorb.serialized.append(header, sizeof(header));
    xorb.serialized += frame;
    leaves.push_back({XetChunkHash(chunk), chunk.size()});
  }
  xorb.hash = XetXorbHash(leaves);
  return xorb;
}

// An upload shard with one file made of all chunks of `xorb`, with verification and sha256
// (`claimed_sha256` instead of the bytes' own when given).
std::string MakeShard(const TestXorb& xorb, bool describe_xorb = true, const std::string& claimed_sha256 = "") {
  std::string shard = "HFRepoMetaData";
  shard.push_back('\0');
  const uint8_t magic[17] = {0x55, 0x69, 0x67, 0x45, 0x6a, 0x7b, 0x81, 0x57, 0x83,
                             0xa5, 0xbd, 0xd9, 0x5c, 0xcd, 0xd1, 0x4a, 0xa9};
  shard.append(reinterpret_cast<const char*>(magic), sizeof(magic));
  AppendUint64(&shard, 2);
  AppendUint64(&shard, 0);
  std::vector<XetHashAndSize> leaves;
  std::vector<XetHash> chunk_hashes;
  std::string data;
  for (const std::string& chunk : xorb.chunks) {
    leaves.push_back({XetChunkHash(chunk), chunk.size()});
    chunk_hashes.push_back(leaves.back().hash);
    data += chunk;
  }
  AppendHash(&shard, XetFileHash(leaves));
  AppendUint32(&shard, (1u << 31) | (1u << 30));
  AppendUint32(&shard, 1);
  AppendUint64(&shard, 0);
  AppendHash(&shard, xorb.hash);
  AppendUint32(&shard, 0);
  AppendUint32(&shard, static_cast<uint32_t>(data.size()));
  AppendUint32(&shard, 0);
  AppendUint32(&shard, static_cast<uint32_t>(xorb.chunks.size()));
  AppendHash(&shard, XetVerificationHash(chunk_hashes, 0, chunk_hashes.size()));
  shard.append(16, '\0');
  absl::StatusOr<XetHash> sha256 = XetHashFromString(claimed_sha256.empty() ? Sha256OfString(data) : claimed_sha256);
  AppendHash(&shard, *sha256);  // hash-string order, as hf_xet writes it
  shard.append(16, '\0');
  shard.append(32, '\xff');
  shard.append(16, '\0');
  if (describe_xorb) {
    AppendHash(&shard, xorb.hash);
    AppendUint32(&shard, 0);
    AppendUint32(&shard, static_cast<uint32_t>(xorb.chunks.size()));
    AppendUint32(&shard, static_cast<uint32_t>(data.size()));
    AppendUint32(&shard, static_cast<uint32_t>(xorb.serialized.size()));
    uint32_t start = 0;
    for (size_t index = 0; index < xorb.chunks.size(); ++index) {
      AppendHash(&shard, chunk_hashes[index]);
      AppendUint32(&shard, start);
      AppendUint32(&shard, static_cast<uint32_t>(xorb.chunks[index].size()));
      AppendUint64(&shard, 0);
      start += static_cast<uint32_t>(xorb.chunks[index].size());
    }
  }
  shard.append(32, '\xff');
  shard.append(16, '\0');
  return shard;
}

// Each test runs on both table backends: SQLite (xet.sqlite3) and a real PostgreSQL server.
class XetStoreTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    std::string test_name = ::testing::UnitTest::GetInstance()->current_test_info()->name();
    std::replace(test_name.begin(), test_name.end(), '/', '_');
    directory_ = std::filesystem::temp_directory_path() / ("xet_store_test_" + std::to_string(getpid()) + "_" + test_name);
    std::filesystem::remove_all(directory_);
    std::shared_ptr<SqlDatabase> database;
    if (GetParam() == "postgres") {
      std::optional<std::string> url = PostgresTestServer::NewDatabase();
      if (!url) GTEST_SKIP() << PostgresTestServer::unavailable_reason();
      database = *OpenSqlDatabase(*url);
    }
    blobs_ = *LocalBlobStore::Open(directory_.string());
    auto store = XetStore::Open(directory_.string(), *blobs_, database);
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = *std::move(store);
    // A second connection to the same tables, to age rows as time passing would.
    database_ = database;
    if (database_ == nullptr) database_ = *OpenSqlDatabase((directory_ / "xet" / "xet.sqlite3").string());
  }
  void TearDown() override {
    database_.reset();
    store_.reset();
    blobs_.reset();
    std::filesystem::remove_all(directory_);
  }

  std::filesystem::path directory_;
  std::unique_ptr<LocalBlobStore> blobs_;
  std::unique_ptr<XetStore> store_;
  std::shared_ptr<SqlDatabase> database_;
};

TEST_P(XetStoreTest, XorbIsVerifiedAndStoredOnce) {
  TestXorb xorb = MakeXorb({RandomBytes(1000, 1), RandomBytes(3000, 2)});
  EXPECT_EQ(*store_->PutXorb(xorb.hash, xorb.serialized), true);
  EXPECT_EQ(*store_->PutXorb(xorb.hash, xorb.serialized), false);
  TestXorb other = MakeXorb({RandomBytes(500, 3)});
  absl::StatusOr<bool> wrong_hash = store_->PutXorb(other.hash, xorb.serialized);
  EXPECT_EQ(wrong_hash.status().code(), absl::StatusCode::kInvalidArgument);
  std::string corrupt = other.serialized;
  corrupt[100] ^= 1;
  EXPECT_EQ(store_->PutXorb(other.hash, corrupt).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store_->PutXorb(other.hash, other.serialized.substr(0, 200)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(std::filesystem::exists(store_->XorbPath(other.hash)));
}

// Every byte range of `data`, read through a reader of the file `sha256`, in pieces of `step`.
void ExpectReadsBack(XetStore& store, const std::string& sha256, const std::string& data, int64_t step) {
  absl::StatusOr<std::unique_ptr<XetFileReader>> reader = store.OpenFile(sha256);
  ASSERT_TRUE(reader.ok()) << reader.status();
  ASSERT_EQ((*reader)->size(), static_cast<int64_t>(data.size()));
  std::string whole;
  for (int64_t offset = 0; offset < static_cast<int64_t>(data.size()); offset += step) {
    ASSERT_TRUE((*reader)->Read(offset, std::min<int64_t>(step, data.size() - offset), &whole).ok());
  }
  EXPECT_TRUE(whole == data);
  // Backwards and across chunk and window boundaries, as Range requests and resumed pulls read.
  std::mt19937 generator(7);
  for (int round = 0; round < 50; ++round) {
    const int64_t offset = generator() % data.size();
    const int64_t length = 1 + generator() % std::min<int64_t>(data.size() - offset, 300000);
    std::string piece;
    ASSERT_TRUE((*reader)->Read(offset, length, &piece).ok());
    ASSERT_TRUE(piece == data.substr(offset, length)) << "bytes " << offset << "+" << length;
  }
  EXPECT_EQ((*reader)->ReadAt(data.size(), 1).status().code(), absl::StatusCode::kOutOfRange);
}

TEST_P(XetStoreTest, ShardIsStoredOnceAsChunksAndReconstructsRanges) {
  TestXorb xorb = MakeXorb({RandomBytes(1000, 4), RandomBytes(2000, 5), RandomBytes(3000, 6)});
  ASSERT_TRUE(store_->PutXorb(xorb.hash, xorb.serialized).ok());
  absl::StatusOr<int> registered = store_->PutShard(MakeShard(xorb), "acme/model");
  ASSERT_TRUE(registered.ok()) << registered.status();
  const std::string data = xorb.chunks[0] + xorb.chunks[1] + xorb.chunks[2];
  const std::string sha256 = Sha256OfString(data);
  // Note [One store, two views]: the xorb is the only copy; the file reads back from it.
  EXPECT_EQ(blobs_->Size(sha256).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(*store_->FileSize(sha256), static_cast<int64_t>(data.size()));
  ExpectReadsBack(*store_, sha256, data, 999);

  std::vector<XetHashAndSize> leaves;
  for (const std::string& chunk : xorb.chunks) leaves.push_back({XetChunkHash(chunk), chunk.size()});
  const XetHash file_hash = XetFileHash(leaves);
  EXPECT_TRUE(store_->Granted(file_hash, "acme/model"));
  EXPECT_FALSE(store_->Granted(file_hash, "acme/other"));
  EXPECT_EQ(*store_->FileHashForBlob(sha256, data.size()), file_hash);

  absl::StatusOr<XetReconstruction> whole = store_->Reconstruct(file_hash, std::nullopt);
  ASSERT_TRUE(whole.ok());
  ASSERT_EQ(whole->terms.size(), 1u);
  EXPECT_EQ(whole->terms[0].unpacked_bytes, data.size());
  // Bytes 1500..2999 lie in chunk 1 only: the term is trimmed to it.
  absl::StatusOr<XetReconstruction> range = store_->Reconstruct(file_hash, std::make_pair(1500, 2999));
  ASSERT_TRUE(range.ok());
  EXPECT_EQ(range->offset_into_first_range, 500u);
  EXPECT_EQ(range->terms[0].chunk_begin, 1u);
  EXPECT_EQ(range->terms[0].chunk_end, 2u);
  EXPECT_EQ(range->fetches[0].byte_begin, 1008u);
  EXPECT_EQ(range->fetches[0].byte_end_inclusive, 1008u + 2008u - 1);
  EXPECT_EQ(store_->Reconstruct(file_hash, std::make_pair(6000, 7000)).status().code(), absl::StatusCode::kOutOfRange);
}

TEST_P(XetStoreTest, BadShardsRecordNothing) {
  TestXorb xorb = MakeXorb({RandomBytes(1000, 7)});
  const std::string shard = MakeShard(xorb);
  // The xorb was never uploaded.
  EXPECT_EQ(store_->PutShard(shard, "acme/model").status().code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(store_->PutXorb(xorb.hash, xorb.serialized).ok());
  EXPECT_EQ(store_->PutShard(shard.substr(0, shard.size() - 20), "acme/model").status().code(),
            absl::StatusCode::kInvalidArgument);
  std::string bad_magic = shard;
  bad_magic[20] ^= 1;
  EXPECT_EQ(store_->PutShard(bad_magic, "acme/model").status().code(), absl::StatusCode::kInvalidArgument);
  std::string bad_verification = shard;
  bad_verification[48 + 48 + 48] ^= 1;  // first byte of the verification entry
  EXPECT_EQ(store_->PutShard(bad_verification, "acme/model").status().code(), absl::StatusCode::kInvalidArgument);
  // A sha256 its bytes do not have.
  const std::string lying = MakeShard(xorb, true, Sha256OfString("something else"));
  absl::StatusOr<int> refused = store_->PutShard(lying, "acme/model");
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(refused.status().message().find("hash to"), std::string::npos) << refused.status();
  EXPECT_EQ(store_->FileSize(Sha256OfString(xorb.chunks[0])).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->FileSize(Sha256OfString("something else")).status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(store_->PutShard(shard, "acme/model").ok());
  EXPECT_EQ(*store_->FileSize(Sha256OfString(xorb.chunks[0])), 1000);
}

TEST_P(XetStoreTest, CompressedChunksReadBackThroughTheDecoder) {
  std::vector<std::string> chunks;
  for (int index = 0; index < 6; ++index) {
    std::string text;
    while (text.size() < 50000 + 1000 * index) text += "layer " + std::to_string(text.size() % 977) + " weights; ";
    chunks.push_back(text);
  }
  TestXorb xorb = MakeCompressedXorb(chunks);
  ASSERT_LT(xorb.serialized.size(), 300000u);  // compressed indeed
  ASSERT_TRUE(store_->PutXorb(xorb.hash, xorb.serialized).ok());
  ASSERT_TRUE(store_->PutShard(MakeShard(xorb), "acme/model").ok());
  std::string data;
  for (const std::string& chunk : chunks) data += chunk;
  ExpectReadsBack(*store_, Sha256OfString(data), data, 65536);
}

TEST_P(XetStoreTest, ChunksAssembleIntoAFileAcrossXorbsWithoutACopy) {
  // Two xorbs of 128 KiB chunks (the largest there are), 5 MiB in all: more than one 4 MiB window.
  std::vector<std::string> first_chunks, second_chunks;
  for (uint32_t index = 0; index < 24; ++index) first_chunks.push_back(RandomBytes(128 * 1024, 100 + index));
  for (uint32_t index = 0; index < 16; ++index) second_chunks.push_back(RandomBytes(128 * 1024 - index, 200 + index));
  TestXorb first = MakeXorb(first_chunks), second = MakeXorb(second_chunks);
  ASSERT_TRUE(store_->PutXorb(first.hash, first.serialized).ok());
  ASSERT_TRUE(store_->PutXorb(second.hash, second.serialized).ok());
  std::string data;
  std::vector<XetHash> hashes;
  for (const auto* chunks : {&second_chunks, &first_chunks}) {
    for (const std::string& chunk : *chunks) {
      data += chunk;
      hashes.push_back(XetChunkHash(chunk));
    }
  }
  const std::string sha256 = Sha256OfString(data);
  absl::Status wrong = store_->CreateBlobFromChunks(Sha256OfString("other"), data.size(), hashes);
  EXPECT_EQ(wrong.code(), absl::StatusCode::kDataLoss) << wrong;
  EXPECT_EQ(store_->FileSize(Sha256OfString("other")).status().code(), absl::StatusCode::kNotFound);
  absl::Status created = store_->CreateBlobFromChunks(sha256, data.size(), hashes);
  ASSERT_TRUE(created.ok()) << created;
  EXPECT_EQ(blobs_->Size(sha256).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->stored_bytes(), static_cast<int64_t>(first.serialized.size() + second.serialized.size()));
  ExpectReadsBack(*store_, sha256, data, 128 * 1024);
}

TEST_P(XetStoreTest, PushedBlobGetsXetViewMatchingChunker) {
  const std::string data = RandomBytes(700 * 1024, 8);
  const std::string sha256 = Sha256OfString(data);
  auto upload = blobs_->BeginUpload(sha256, data.size(), 0);
  ASSERT_TRUE(upload.ok());
  ASSERT_TRUE((*upload)->Append(data).ok());
  ASSERT_TRUE((*upload)->Finish().ok());
  // In the background first (what a HEAD /resolve/ asks for), then the synchronous lookup agrees.
  store_->IndexInBackground(sha256, data.size());
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  while (!store_->ExistingFileHashForBlob(sha256, data.size()) && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(10));
  ASSERT_TRUE(store_->ExistingFileHashForBlob(sha256, data.size()).has_value());
  absl::StatusOr<XetHash> file_hash = store_->FileHashForBlob(sha256, data.size());
  ASSERT_TRUE(file_hash.ok()) << file_hash.status();
  EXPECT_EQ(*file_hash, XetFileHash(XetChunkHashes(reinterpret_cast<const uint8_t*>(data.data()), data.size())));
  absl::StatusOr<XetReconstruction> plan = store_->Reconstruct(*file_hash, std::nullopt);
  ASSERT_TRUE(plan.ok());
  uint64_t total = 0;
  for (const XetReconstructionTerm& term : plan->terms) total += term.unpacked_bytes;
  EXPECT_EQ(total, data.size());
  // Note [One store, two views]: the view's xorbs replaced the blob; the file reads back from them.
  EXPECT_EQ(blobs_->Size(sha256).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(*store_->FileSize(sha256), static_cast<int64_t>(data.size()));
  ExpectReadsBack(*store_, sha256, data, 131072);
  EXPECT_EQ(*store_->FileHashForBlob(sha256, data.size()), *file_hash);
}

TEST_P(XetStoreTest, TokensAreScopedSignedAndExpire) {
  const int64_t later = absl::ToUnixSeconds(absl::Now()) + 60;
  std::string token = store_->IssueToken("acme/model", true, later);
  absl::StatusOr<XetTokenClaims> claims = store_->CheckToken("Bearer " + token);
  ASSERT_TRUE(claims.ok());
  EXPECT_EQ(claims->repository, "acme/model");
  EXPECT_TRUE(claims->write);
  std::string forged = token;
  forged.back() = forged.back() == '0' ? '1' : '0';
  EXPECT_EQ(store_->CheckToken("Bearer " + forged).status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(store_->CheckToken(token).status().code(), absl::StatusCode::kUnauthenticated);
  const std::string expired = store_->IssueToken("acme/model", false, later - 120);
  EXPECT_EQ(store_->CheckToken("Bearer " + expired).status().code(), absl::StatusCode::kUnauthenticated);
  TestXorb xorb = MakeXorb({RandomBytes(10, 9)});
  EXPECT_TRUE(store_->CheckFetch(xorb.hash, later, store_->SignFetch(xorb.hash, later)));
  EXPECT_FALSE(store_->CheckFetch(xorb.hash, later + 1, store_->SignFetch(xorb.hash, later)));
}

TEST_P(XetStoreTest, DedupShardDescribesTheXorbWithKeyedHashes) {
  TestXorb xorb = MakeXorb({RandomBytes(1000, 10), RandomBytes(1000, 11)});
  ASSERT_TRUE(store_->PutXorb(xorb.hash, xorb.serialized).ok());
  EXPECT_EQ(store_->DedupShard(XetChunkHash("absent")).status().code(), absl::StatusCode::kNotFound);
  absl::StatusOr<std::string> shard = store_->DedupShard(XetChunkHash(xorb.chunks[1]));
  ASSERT_TRUE(shard.ok());
  absl::StatusOr<ParsedShard> parsed = ParseShard(*shard);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  ASSERT_EQ(parsed->xorbs.size(), 1u);
  EXPECT_EQ(parsed->xorbs[0].xorb_hash, xorb.hash);
  // The footer's key (200 bytes from the end, at offset 72) keys every chunk hash.
  XetHash key;
  std::memcpy(key.data(), shard->data() + shard->size() - 200 + 72, 32);
  EXPECT_EQ(parsed->xorbs[0].chunks[1].chunk_hash, XetKeyedChunkHash(key, XetChunkHash(xorb.chunks[1])));
}

TEST_P(XetStoreTest, GarbageCollectionSparesReferencedAndRecentFiles) {
  TestXorb xorb = MakeXorb({RandomBytes(1000, 12)});
  ASSERT_TRUE(store_->PutXorb(xorb.hash, xorb.serialized).ok());
  ASSERT_TRUE(store_->PutShard(MakeShard(xorb), "acme/model").ok());
  const std::string sha256 = Sha256OfString(xorb.chunks[0]);
  // Within the grace period nothing goes, referenced or not.
  EXPECT_EQ(store_->CollectGarbage({}, absl::Now() - absl::Minutes(10), false)->deleted_xorbs, 0);
  // Referenced by a commit: kept past the grace period.
  EXPECT_EQ(store_->CollectGarbage({sha256}, absl::Now() + absl::Seconds(1), false)->deleted_xorbs, 0);
  XetGarbageReport report = *store_->CollectGarbage({}, absl::Now() + absl::Seconds(1), false);
  EXPECT_EQ(report.deleted_files, 1);
  EXPECT_EQ(report.deleted_xorbs, 1);
  EXPECT_FALSE(std::filesystem::exists(store_->XorbPath(xorb.hash)));
}

// Note [Xet garbage collection]: a push that finds a file stored refreshes the file and its xorbs
// together, so a collection that follows keeps both (the xorbs are the file's only copy); without
// that, both go once old.
TEST_P(XetStoreTest, AFileFoundByAPushKeepsItsXorbsThroughCollection) {
  TestXorb xorb = MakeXorb({RandomBytes(3000, 13), RandomBytes(2000, 14)});
  ASSERT_TRUE(store_->PutXorb(xorb.hash, xorb.serialized).ok());
  ASSERT_TRUE(store_->PutShard(MakeShard(xorb), "acme/model").ok());
  const std::string sha256 = Sha256OfString(xorb.chunks[0] + xorb.chunks[1]);
  auto age_everything = [&] {
    ASSERT_TRUE(database_->Run("UPDATE files SET created = 0").ok());
    ASSERT_TRUE(database_->Run("UPDATE xorbs SET created = 0").ok());
  };
  age_everything();
  ASSERT_EQ(*store_->FileSize(sha256, /*touch=*/true), 5000);
  XetGarbageReport kept = *store_->CollectGarbage({}, absl::Now() - absl::Minutes(1), false);
  EXPECT_EQ(kept.deleted_files, 0);
  EXPECT_EQ(kept.deleted_xorbs, 0);
  ExpectReadsBack(*store_, sha256, xorb.chunks[0] + xorb.chunks[1], 1000);
  age_everything();
  XetGarbageReport collected = *store_->CollectGarbage({}, absl::Now() - absl::Minutes(1), false);
  EXPECT_EQ(collected.deleted_files, 1);
  EXPECT_EQ(collected.deleted_xorbs, 1);
  EXPECT_EQ(store_->FileSize(sha256, /*touch=*/true).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->OpenFile(sha256).status().code(), absl::StatusCode::kNotFound);
}

INSTANTIATE_TEST_SUITE_P(Backends, XetStoreTest, ::testing::Values("sqlite", "postgres"),
                         [](const ::testing::TestParamInfo<std::string>& info) { return info.param; });

}  // namespace
}  // namespace flotilla::registry
