#include "services/registry/xet_store.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <random>

#include <absl/status/status.h>
#include <absl/strings/escaping.h>
#include <absl/strings/numbers.h>
#include <absl/strings/str_cat.h>
#include <absl/strings/str_split.h>
#include <absl/strings/strip.h>
#include <absl/time/clock.h>
#include <openssl/crypto.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include "services/registry/xet_chunker.h"

namespace flotilla::registry {
namespace {

constexpr char kSqliteSchema[] = R"sql(
CREATE TABLE IF NOT EXISTS xorbs(hash TEXT PRIMARY KEY, data_bytes INTEGER NOT NULL, file_bytes INTEGER NOT NULL,
  chunk_hashes BLOB NOT NULL, packed_ends BLOB NOT NULL, unpacked_ends BLOB NOT NULL, created INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS chunks(hash TEXT PRIMARY KEY, xorb TEXT NOT NULL, chunk_index INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS chunks_by_xorb ON chunks(xorb);
CREATE TABLE IF NOT EXISTS files(hash TEXT PRIMARY KEY, sha256 TEXT NOT NULL, size INTEGER NOT NULL,
  terms BLOB NOT NULL, created INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS files_by_sha256 ON files(sha256);
CREATE TABLE IF NOT EXISTS file_xorbs(xorb TEXT NOT NULL, file TEXT NOT NULL, PRIMARY KEY(xorb, file));
CREATE TABLE IF NOT EXISTS file_repositories(file TEXT NOT NULL, repository TEXT NOT NULL,
  PRIMARY KEY(file, repository));
)sql";

// The same tables in the registry's PostgreSQL database (beside the metadata tables, no name in
// common), plus the CAS token secret, which every replica must share: a token one replica issues
// is checked by whichever replica the client's next request reaches.
constexpr char kPostgresSchema[] = R"sql(
CREATE TABLE IF NOT EXISTS xorbs(hash TEXT COLLATE "C" PRIMARY KEY, data_bytes BIGINT NOT NULL,
  file_bytes BIGINT NOT NULL, chunk_hashes BYTEA NOT NULL, packed_ends BYTEA NOT NULL, unpacked_ends BYTEA NOT NULL,
  created BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS chunks(hash TEXT COLLATE "C" PRIMARY KEY, xorb TEXT COLLATE "C" NOT NULL,
  chunk_index BIGINT NOT NULL);
CREATE INDEX IF NOT EXISTS chunks_by_xorb ON chunks(xorb);
CREATE TABLE IF NOT EXISTS files(hash TEXT COLLATE "C" PRIMARY KEY, sha256 TEXT COLLATE "C" NOT NULL,
  size BIGINT NOT NULL, terms BYTEA NOT NULL, created BIGINT NOT NULL);
CREATE INDEX IF NOT EXISTS files_by_sha256 ON files(sha256);
CREATE TABLE IF NOT EXISTS file_xorbs(xorb TEXT COLLATE "C" NOT NULL, file TEXT COLLATE "C" NOT NULL,
  PRIMARY KEY(xorb, file));
CREATE TABLE IF NOT EXISTS file_repositories(file TEXT COLLATE "C" NOT NULL, repository TEXT COLLATE "C" NOT NULL,
  PRIMARY KEY(file, repository));
CREATE TABLE IF NOT EXISTS xet_secrets(name TEXT PRIMARY KEY, secret BYTEA NOT NULL)
)sql";

template <typename T>
std::string PackArray(const std::vector<T>& values) {
  return std::string(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(T));
}
template <typename T>
std::vector<T> UnpackArray(const std::string& bytes) {
  std::vector<T> values(bytes.size() / sizeof(T));
  std::memcpy(values.data(), bytes.data(), values.size() * sizeof(T));
  return values;
}

// Terms as 44-byte records: xorb hash, chunk begin, chunk end, unpacked bytes (u32 each).
std::string PackTerms(const std::vector<XetReconstructionTerm>& terms) {
  std::string bytes;
  for (const XetReconstructionTerm& term : terms) {
    bytes.append(reinterpret_cast<const char*>(term.xorb_hash.data()), 32);
    uint32_t fields[3] = {term.chunk_begin, term.chunk_end, static_cast<uint32_t>(term.unpacked_bytes)};
    bytes.append(reinterpret_cast<const char*>(fields), sizeof(fields));
  }
  return bytes;
}
std::vector<XetReconstructionTerm> UnpackTerms(const std::string& bytes) {
  std::vector<XetReconstructionTerm> terms;
  for (size_t offset = 0; offset + 44 <= bytes.size(); offset += 44) {
    XetReconstructionTerm term;
    std::memcpy(term.xorb_hash.data(), bytes.data() + offset, 32);
    uint32_t fields[3];
    std::memcpy(fields, bytes.data() + offset + 32, sizeof(fields));
    term.chunk_begin = fields[0];
    term.chunk_end = fields[1];
    term.unpacked_bytes = fields[2];
    terms.push_back(term);
  }
  return terms;
}

std::string HmacHex(const std::string& secret, absl::string_view message) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  HMAC(EVP_sha256(), secret.data(), static_cast<int>(secret.size()),
       reinterpret_cast<const unsigned char*>(message.data()), message.size(), digest, &length);
  return absl::BytesToHexString(absl::string_view(reinterpret_cast<const char*>(digest), length));
}

bool ConstantTimeEquals(absl::string_view left, absl::string_view right) {
  return left.size() == right.size() && CRYPTO_memcmp(left.data(), right.data(), left.size()) == 0;
}

absl::Status SyncDirectory(const std::string& path) {
  int descriptor = open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (descriptor < 0) return absl::InternalError(absl::StrCat("open directory ", path, ": ", std::strerror(errno)));
  fsync(descriptor);
  close(descriptor);
  return absl::OkStatus();
}

absl::StatusOr<std::string> ReadOrCreateSecret(const std::string& path) {
  int descriptor = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (descriptor < 0) {
    unsigned char secret[32];
    RAND_bytes(secret, sizeof(secret));
    const std::string temporary = path + ".tmp";
    descriptor = open(temporary.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (descriptor < 0) return absl::InternalError(absl::StrCat("create ", temporary, ": ", std::strerror(errno)));
    bool written = write(descriptor, secret, sizeof(secret)) == static_cast<ssize_t>(sizeof(secret)) && fsync(descriptor) == 0;
    close(descriptor);
    if (!written || rename(temporary.c_str(), path.c_str()) != 0) {
      return absl::InternalError(absl::StrCat("write ", path, ": ", std::strerror(errno)));
    }
    return std::string(reinterpret_cast<const char*>(secret), sizeof(secret));
  }
  char secret[32];
  ssize_t got = read(descriptor, secret, sizeof(secret));
  close(descriptor);
  if (got != static_cast<ssize_t>(sizeof(secret))) {
    return absl::DataLossError(absl::StrCat("read ", path, ": expected 32 bytes, got ", got));
  }
  return std::string(secret, sizeof(secret));
}

// The replicas' common secret: the first to start writes a random one, the others read it.
absl::StatusOr<std::string> SharedSecret(SqlDatabase& database) {
  unsigned char fresh[32];
  RAND_bytes(fresh, sizeof(fresh));
  absl::StatusOr<SqlRows> inserted = database.Run(
      "INSERT INTO xet_secrets(name, secret) VALUES('cas_token', ?) ON CONFLICT DO NOTHING",
      {SqlBytes{std::string(reinterpret_cast<const char*>(fresh), sizeof(fresh))}});
  if (!inserted.ok()) return inserted.status();
  absl::StatusOr<SqlRows> rows = database.Run("SELECT secret FROM xet_secrets WHERE name = 'cas_token'");
  if (!rows.ok()) return rows.status();
  if (rows->empty() || rows->Text(0, 0).size() != sizeof(fresh)) {
    return absl::DataLossError("read the Xet CAS token secret: expected 32 bytes in xet_secrets");
  }
  return rows->Text(0, 0);
}

std::optional<XetHash> FirstFileHash(const absl::StatusOr<SqlRows>& rows) {
  if (!rows.ok() || rows->empty()) return std::nullopt;
  absl::StatusOr<XetHash> hash = XetHashFromString(rows->Text(0, 0));
  if (!hash.ok()) return std::nullopt;
  return *hash;
}

constexpr char kFileBySha256[] = "SELECT hash FROM files WHERE sha256 = ? AND size = ? LIMIT 1";

}  // namespace

absl::StatusOr<std::unique_ptr<XetStore>> XetStore::Open(const std::string& data_directory, BlobStore& blobs,
                                                         std::shared_ptr<SqlDatabase> database, S3Client* xorb_bucket,
                                                         std::string xorb_prefix) {
  const std::string root = data_directory + "/xet";
  std::error_code error;
  std::filesystem::create_directories(root + "/xorbs/tmp", error);
  if (error) return absl::InternalError(absl::StrCat("create ", root, "/xorbs: ", error.message()));
  // Temporary xorb files of uploads a crash interrupted are never referenced: drop them.
  for (const auto& entry : std::filesystem::directory_iterator(root + "/xorbs/tmp", error)) {
    std::filesystem::remove(entry.path(), error);
  }
  if (database == nullptr) {
    absl::StatusOr<std::unique_ptr<SqlDatabase>> opened = OpenSqlDatabase(root + "/xet.sqlite3");
    if (!opened.ok()) return opened.status();
    database = *std::move(opened);
  }
  const bool postgres = database->dialect() == SqlDialect::kPostgres;
  if (absl::Status status = database->ExecuteScript(postgres ? kPostgresSchema : kSqliteSchema); !status.ok()) {
    return absl::Status(status.code(), absl::StrCat("create the Xet tables: ", status.message()));
  }
  absl::StatusOr<std::string> secret =
      postgres ? SharedSecret(*database) : ReadOrCreateSecret(root + "/token_secret");
  if (!secret.ok()) return secret.status();
  auto store = std::unique_ptr<XetStore>(new XetStore(root, blobs, std::move(database), *std::move(secret)));
  store->xorb_bucket_ = xorb_bucket;
  store->xorb_prefix_ = std::move(xorb_prefix);
  return store;
}

XetStore::XetStore(std::string root, BlobStore& blobs, std::shared_ptr<SqlDatabase> database, std::string secret)
    : root_(std::move(root)), blobs_(blobs), database_(std::move(database)), secret_(std::move(secret)) {}

XetStore::~XetStore() {
  {
    std::lock_guard lock(index_mutex_);
    index_stopping_ = true;
  }
  index_ready_.notify_all();
  if (index_thread_.joinable()) index_thread_.join();
}

void XetStore::IndexInBackground(const std::string& sha256, int64_t size) {
  {
    std::lock_guard lock(index_mutex_);
    if (index_stopping_ || !index_pending_.insert(sha256).second) return;
    index_queue_.emplace_back(sha256, size);
    if (!index_thread_.joinable()) index_thread_ = std::thread([this] { IndexLoop(); });
  }
  index_ready_.notify_one();
}

void XetStore::IndexLoop() {
  while (true) {
    std::pair<std::string, int64_t> next;
    {
      std::unique_lock lock(index_mutex_);
      index_ready_.wait(lock, [&] { return index_stopping_ || !index_queue_.empty(); });
      if (index_stopping_) return;
      next = index_queue_.front();
      index_queue_.pop_front();
    }
    // A failure (the blob was collected meanwhile) only means the file stays HTTP-only for now.
    FileHashForBlob(next.first, next.second).IgnoreError();
    std::lock_guard lock(index_mutex_);
    index_pending_.erase(next.first);
  }
}

std::optional<XetHash> XetStore::ExistingFileHashForBlob(const std::string& sha256, int64_t size) {
  return FirstFileHash(database_->Run(kFileBySha256, {sha256, size}));
}

std::string XetStore::XorbPath(const XetHash& hash) const {
  const std::string text = XetHashToString(hash);
  return absl::StrCat(root_, "/xorbs/", text.substr(0, 2), "/", text);
}

absl::Status XetStore::WriteXorbFile(const XetHash& hash, absl::string_view serialized) {
  // Temporary file, fsync, rename, fsync the folder: a xorb file is complete or absent.
  const std::string path = XorbPath(hash);
  const std::string folder = std::filesystem::path(path).parent_path();
  std::error_code error;
  std::filesystem::create_directories(folder, error);
  std::random_device random;
  const std::string temporary = absl::StrCat(root_, "/xorbs/tmp/", XetHashToString(hash), ".", random());
  // Past the page cache (Note [Direct upload writes] in blob_store.cc): the buffered copy into
  // freshly allocated page cache was 38% of the registry's CPU during an hf_xet upload.
  if (absl::Status status = WriteFileDurably(temporary, serialized); !status.ok()) {
    unlink(temporary.c_str());
    return status;
  }
  if (rename(temporary.c_str(), path.c_str()) != 0) {
    unlink(temporary.c_str());
    return absl::InternalError(absl::StrCat("store xorb ", path, ": ", std::strerror(errno)));
  }
  if (absl::Status status = SyncDirectory(folder); !status.ok()) return status;
  // Shared storage: the bucket's copy must exist before the xorb is recorded (RecordXorb), so no
  // replica ever finds a recorded xorb it cannot fetch.
  if (xorb_bucket_ != nullptr) {
    absl::Status uploaded = xorb_bucket_->PutFile(xorb_prefix_ + XetHashToString(hash), path, Sha256OfString(serialized));
    if (!uploaded.ok()) {
      unlink(path.c_str());
      return uploaded;
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> XetStore::LocalXorbPath(const XetHash& hash) {
  const std::string path = XorbPath(hash);
  if (access(path.c_str(), R_OK) == 0) return path;
  const std::string text = XetHashToString(hash);
  if (xorb_bucket_ == nullptr) return absl::NotFoundError(absl::StrCat("xorb ", text, " is not stored"));
  std::error_code error;
  std::filesystem::create_directories(std::filesystem::path(path).parent_path(), error);
  std::random_device random;
  const std::string temporary = absl::StrCat(root_, "/xorbs/tmp/", text, ".fetch.", random());
  if (absl::Status status = xorb_bucket_->GetToFile(xorb_prefix_ + text, temporary); !status.ok()) {
    unlink(temporary.c_str());
    if (absl::IsNotFound(status)) return absl::NotFoundError(absl::StrCat("xorb ", text, " is not stored"));
    return status;
  }
  if (rename(temporary.c_str(), path.c_str()) != 0) {
    unlink(temporary.c_str());
    return absl::InternalError(absl::StrCat("store fetched xorb ", path, ": ", std::strerror(errno)));
  }
  return path;
}

absl::Status XetStore::RecordXorb(const XetHash& hash, const ParsedXorb& xorb) {
  const std::string text = XetHashToString(hash);
  std::error_code error;
  const int64_t file_bytes = static_cast<int64_t>(std::filesystem::file_size(XorbPath(hash), error));
  absl::Status status = database_->Transaction([&](SqlSession& session) -> absl::Status {
    absl::Status inserted =
        session
            .Run("INSERT INTO xorbs(hash, data_bytes, file_bytes, chunk_hashes, packed_ends, unpacked_ends, created) "
                 "VALUES(?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                 {text, static_cast<int64_t>(xorb.data_size), file_bytes, SqlBytes{PackArray(xorb.chunk_hashes)},
                  SqlBytes{PackArray(xorb.packed_ends)}, SqlBytes{PackArray(xorb.unpacked_ends)},
                  static_cast<int64_t>(absl::ToUnixSeconds(absl::Now()))})
            .status();
    if (!inserted.ok()) return inserted;
    // The first xorb that stores a chunk is where global dedup points.
    for (size_t index = 0; index < xorb.chunk_hashes.size(); ++index) {
      absl::Status chunk = session
                               .Run("INSERT INTO chunks(hash, xorb, chunk_index) VALUES(?, ?, ?) ON CONFLICT DO NOTHING",
                                    {XetHashToString(xorb.chunk_hashes[index]), text, static_cast<int64_t>(index)})
                               .status();
      if (!chunk.ok()) return chunk;
    }
    return absl::OkStatus();
  });
  if (!status.ok()) return absl::Status(status.code(), absl::StrCat("xet store: record xorb ", text, ": ", status.message()));
  return status;
}

absl::StatusOr<bool> XetStore::PutXorb(const XetHash& hash, absl::string_view serialized) {
  std::shared_lock gc_lock(gc_mutex_);
  if (LoadXorb(hash).ok()) return false;
  absl::StatusOr<ParsedXorb> xorb = ParseXorb(serialized, hash);
  if (!xorb.ok()) return xorb.status();
  if (absl::Status status = WriteXorbFile(hash, serialized); !status.ok()) return status;
  if (absl::Status status = RecordXorb(hash, *xorb); !status.ok()) return status;
  return true;
}

absl::StatusOr<XetStore::XorbRecord> XetStore::LoadXorb(const XetHash& hash) {
  absl::StatusOr<SqlRows> rows = database_->Run(
      "SELECT data_bytes, chunk_hashes, packed_ends, unpacked_ends, file_bytes FROM xorbs WHERE hash = ?",
      {XetHashToString(hash)});
  if (!rows.ok()) return rows.status();
  if (rows->empty()) return absl::NotFoundError(absl::StrCat("xorb ", XetHashToString(hash), " is not stored"));
  XorbRecord record;
  record.data_bytes = static_cast<uint64_t>(rows->Int(0, 0));
  record.chunk_hashes = UnpackArray<XetHash>(rows->Text(0, 1));
  record.packed_ends = UnpackArray<uint32_t>(rows->Text(0, 2));
  record.unpacked_ends = UnpackArray<uint32_t>(rows->Text(0, 3));
  record.file_bytes = static_cast<uint64_t>(rows->Int(0, 4));
  return record;
}

absl::StatusOr<XetStore::FileRecord> XetStore::LoadFile(const XetHash& hash) {
  absl::StatusOr<SqlRows> rows = database_->Run("SELECT sha256, size, terms FROM files WHERE hash = ?", {XetHashToString(hash)});
  if (!rows.ok()) return rows.status();
  if (rows->empty()) return absl::NotFoundError(absl::StrCat("file ", XetHashToString(hash), " is not stored"));
  FileRecord record;
  record.sha256 = rows->Text(0, 0);
  record.size = static_cast<uint64_t>(rows->Int(0, 1));
  record.terms = UnpackTerms(rows->Text(0, 2));
  return record;
}

absl::Status XetStore::RecordFile(const XetHash& hash, const FileRecord& file) {
  const std::string text = XetHashToString(hash);
  const int64_t now = absl::ToUnixSeconds(absl::Now());
  absl::Status status = database_->Transaction([&](SqlSession& session) -> absl::Status {
    // A re-upload refreshes the file's age, so garbage collection's grace period covers its commit.
    absl::Status inserted = session
                                .Run("INSERT INTO files(hash, sha256, size, terms, created) VALUES(?, ?, ?, ?, ?) "
                                     "ON CONFLICT (hash) DO UPDATE SET created = excluded.created",
                                     {text, file.sha256, static_cast<int64_t>(file.size), SqlBytes{PackTerms(file.terms)}, now})
                                .status();
    if (!inserted.ok()) return inserted;
    std::set<XetHash> xorbs;
    for (const XetReconstructionTerm& term : file.terms) xorbs.insert(term.xorb_hash);
    for (const XetHash& xorb : xorbs) {
      // Note [Xet garbage collection]: the file's xorbs are its only copy, so each must still be
      // stored when the file is recorded, and must not be collected after: refreshing its age in
      // this transaction makes a collection on any replica either delete it first (then this
      // finds no row, and the shard is refused: upload the xorb again) or see it as young.
      absl::StatusOr<SqlRows> touched = session.Run("UPDATE xorbs SET created = ? WHERE hash = ? RETURNING hash",
                                                    {now, XetHashToString(xorb)});
      if (!touched.ok()) return touched.status();
      if (touched->empty()) {
        // The status a shard naming a missing xorb gets (400), as for the checks before.
        return absl::InvalidArgumentError(absl::StrCat("xorb ", XetHashToString(xorb),
                                                       " was collected meanwhile; upload it again"));
      }
      absl::Status uses = session
                              .Run("INSERT INTO file_xorbs(xorb, file) VALUES(?, ?) ON CONFLICT DO NOTHING",
                                   {XetHashToString(xorb), text})
                              .status();
      if (!uses.ok()) return uses;
    }
    return absl::OkStatus();
  });
  if (!status.ok()) return absl::Status(status.code(), absl::StrCat("xet store: record file ", text, ": ", status.message()));
  return status;
}

absl::Status XetStore::Grant(const XetHash& file_hash, const std::string& repository) {
  absl::Status status = database_
                            ->Run("INSERT INTO file_repositories(file, repository) VALUES(?, ?) ON CONFLICT DO NOTHING",
                                  {XetHashToString(file_hash), repository})
                            .status();
  if (!status.ok()) return absl::Status(status.code(), absl::StrCat("xet store: grant file to ", repository, ": ", status.message()));
  return status;
}

bool XetStore::Granted(const XetHash& file_hash, const std::string& repository) {
  absl::StatusOr<SqlRows> rows = database_->Run("SELECT 1 FROM file_repositories WHERE file = ? AND repository = ?",
                                                {XetHashToString(file_hash), repository});
  return rows.ok() && !rows->empty();
}

// Note [Reading a Xet file]: a file stored as chunks is read back by decoding windows of whole
// chunks (up to kWindowBytes of file bytes, one term at a time). A window of chunks stored without
// compression, whose sizes show it (packed size = 8-byte header + unpacked size), is read by one
// preadv that puts each header into a scratch buffer and each payload straight into the window:
// one copy from the page cache, as a read of a blob would be. The headers are then checked, and a
// window whose headers say otherwise (or that holds compressed chunks) is read whole and decoded.
namespace {
constexpr size_t kWindowBytes = 4 << 20;
constexpr size_t kWindowChunks = 512;  // two iovecs per chunk within IOV_MAX (1024)
constexpr size_t kChunkHeaderBytes = 8;

uint32_t ReadUint24(const uint8_t* bytes) { return bytes[0] | (bytes[1] << 8) | (bytes[2] << 16); }
}  // namespace

XetFileReader::~XetFileReader() {
  for (const std::unique_ptr<Xorb>& xorb : xorbs_) {
    if (xorb->descriptor >= 0) close(xorb->descriptor);
  }
}

absl::Status XetFileReader::Fill(int64_t offset) {
  auto term = std::upper_bound(terms_.begin(), terms_.end(), offset,
                               [](int64_t value, const Term& candidate) { return value < candidate.file_offset; });
  --term;  // terms_[0].file_offset is 0 and offset >= 0
  const Xorb& xorb = *term->xorb;
  auto unpacked_start = [&](uint32_t chunk) -> uint64_t { return chunk == 0 ? 0 : xorb.unpacked_ends[chunk - 1]; };
  auto packed_start = [&](uint32_t chunk) -> uint64_t { return chunk == 0 ? 0 : xorb.packed_ends[chunk - 1]; };
  const uint64_t term_base = unpacked_start(term->chunk_begin);
  const uint64_t target = term_base + static_cast<uint64_t>(offset - term->file_offset);
  const uint32_t first = static_cast<uint32_t>(
      std::upper_bound(xorb.unpacked_ends.begin() + term->chunk_begin, xorb.unpacked_ends.begin() + term->chunk_end, target) -
      xorb.unpacked_ends.begin());
  uint32_t last = first;  // exclusive
  uint64_t decoded = 0;
  bool uncompressed = true;
  while (last < term->chunk_end && last - first < kWindowChunks) {
    const uint64_t chunk_bytes = xorb.unpacked_ends[last] - unpacked_start(last);
    if (last > first && decoded + chunk_bytes > kWindowBytes) break;
    uncompressed = uncompressed && xorb.packed_ends[last] - packed_start(last) == chunk_bytes + kChunkHeaderBytes;
    decoded += chunk_bytes;
    ++last;
  }
  const uint64_t packed_begin = packed_start(first);
  const uint64_t packed_bytes = xorb.packed_ends[last - 1] - packed_begin;
  auto short_read = [&](ssize_t got) {
    return absl::DataLossError(absl::StrCat("read ", what_, ": xorb file ", xorb.path, ": expected ", packed_bytes,
                                            " bytes at ", packed_begin, ", read ", got,
                                            got < 0 ? absl::StrCat(" (", std::strerror(errno), ")") : ""));
  };
  window_begin_ = term->file_offset + static_cast<int64_t>(unpacked_start(first) - term_base);
  if (uncompressed) {
    window_.resize(decoded);
    headers_.resize(kChunkHeaderBytes * (last - first));
    std::vector<iovec> pieces;
    pieces.reserve(2 * (last - first));
    size_t window_offset = 0;
    for (uint32_t chunk = first; chunk < last; ++chunk) {
      const size_t chunk_bytes = xorb.unpacked_ends[chunk] - unpacked_start(chunk);
      pieces.push_back({headers_.data() + kChunkHeaderBytes * (chunk - first), kChunkHeaderBytes});
      pieces.push_back({window_.data() + window_offset, chunk_bytes});
      window_offset += chunk_bytes;
    }
    ssize_t got = preadv(xorb.descriptor, pieces.data(), static_cast<int>(pieces.size()), static_cast<off_t>(packed_begin));
    if (got != static_cast<ssize_t>(packed_bytes)) return short_read(got);
    for (uint32_t chunk = first; chunk < last && uncompressed; ++chunk) {
      const auto* header = reinterpret_cast<const uint8_t*>(headers_.data() + kChunkHeaderBytes * (chunk - first));
      const uint32_t chunk_bytes = xorb.unpacked_ends[chunk] - static_cast<uint32_t>(unpacked_start(chunk));
      uncompressed = header[0] == 0 && header[4] == 0 && ReadUint24(header + 1) == chunk_bytes &&
                     ReadUint24(header + 5) == chunk_bytes;
    }
    if (uncompressed) return absl::OkStatus();
  }
  packed_.resize(packed_bytes);
  ssize_t got = pread(xorb.descriptor, packed_.data(), packed_bytes, static_cast<off_t>(packed_begin));
  if (got != static_cast<ssize_t>(packed_bytes)) return short_read(got);
  window_.clear();
  size_t position = 0;
  for (uint32_t chunk = first; chunk < last; ++chunk) {
    size_t consumed = 0;
    absl::StatusOr<std::string> bytes = DecodeXorbChunk(absl::string_view(packed_).substr(position), &consumed);
    if (!bytes.ok()) {
      return absl::DataLossError(absl::StrCat("read ", what_, ": xorb file ", xorb.path, " chunk ", chunk, ": ",
                                              bytes.status().message()));
    }
    window_.append(*bytes);
    position += consumed;
  }
  if (window_.size() != decoded) {
    return absl::DataLossError(absl::StrCat("read ", what_, ": xorb file ", xorb.path, ": chunks ", first, "..", last,
                                            " decode to ", window_.size(), " bytes, expected ", decoded));
  }
  return absl::OkStatus();
}

absl::StatusOr<absl::string_view> XetFileReader::ReadAt(int64_t offset, int64_t max_length) {
  if (offset < 0 || offset >= size_) {
    return absl::OutOfRangeError(absl::StrCat("read ", what_, ": offset ", offset, " outside its ", size_, " bytes"));
  }
  if (offset < window_begin_ || offset >= window_begin_ + static_cast<int64_t>(window_.size())) {
    if (absl::Status status = Fill(offset); !status.ok()) {
      window_.clear();
      return status;
    }
  }
  const int64_t available = window_begin_ + static_cast<int64_t>(window_.size()) - offset;
  return absl::string_view(window_).substr(static_cast<size_t>(offset - window_begin_),
                                           static_cast<size_t>(std::min(available, max_length)));
}

absl::Status XetFileReader::Read(int64_t offset, int64_t length, std::string* output) {
  while (length > 0) {
    absl::StatusOr<absl::string_view> piece = ReadAt(offset, length);
    if (!piece.ok()) return piece.status();
    output->append(piece->data(), piece->size());
    offset += static_cast<int64_t>(piece->size());
    length -= static_cast<int64_t>(piece->size());
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<XetFileReader>> XetStore::OpenTerms(const std::vector<XetReconstructionTerm>& terms,
                                                                   const std::string& what) {
  auto reader = std::unique_ptr<XetFileReader>(new XetFileReader());
  reader->what_ = what;
  std::map<XetHash, XetFileReader::Xorb*> opened;
  for (const XetReconstructionTerm& stored : terms) {
    XetFileReader::Xorb*& xorb = opened[stored.xorb_hash];
    if (xorb == nullptr) {
      absl::StatusOr<XorbRecord> record = LoadXorb(stored.xorb_hash);
      if (!record.ok()) return absl::DataLossError(absl::StrCat("read ", what, ": ", record.status().message()));
      absl::StatusOr<std::string> path = LocalXorbPath(stored.xorb_hash);
      if (!path.ok()) return absl::DataLossError(absl::StrCat("read ", what, ": ", path.status().message()));
      auto owned = std::make_unique<XetFileReader::Xorb>();
      owned->path = *path;
      owned->descriptor = open(path->c_str(), O_RDONLY | O_CLOEXEC);
      if (owned->descriptor < 0) {
        return absl::DataLossError(absl::StrCat("read ", what, ": open xorb file ", *path, ": ", std::strerror(errno)));
      }
      posix_fadvise(owned->descriptor, 0, 0, POSIX_FADV_SEQUENTIAL);
      owned->packed_ends = std::move(record->packed_ends);
      owned->unpacked_ends = std::move(record->unpacked_ends);
      xorb = owned.get();
      reader->xorbs_.push_back(std::move(owned));
    }
    if (stored.chunk_begin >= stored.chunk_end || stored.chunk_end > xorb->unpacked_ends.size()) {
      return absl::DataLossError(absl::StrCat("read ", what, ": a term names chunks [", stored.chunk_begin, ", ",
                                              stored.chunk_end, ") of xorb ", XetHashToString(stored.xorb_hash),
                                              ", which holds ", xorb->unpacked_ends.size()));
    }
    reader->terms_.push_back({xorb, stored.chunk_begin, stored.chunk_end, reader->size_});
    reader->size_ += static_cast<int64_t>(stored.unpacked_bytes);
  }
  return reader;
}

absl::StatusOr<std::string> XetStore::Sha256OfTerms(const std::vector<XetReconstructionTerm>& terms,
                                                    const std::string& what) {
  absl::StatusOr<std::unique_ptr<XetFileReader>> reader = OpenTerms(terms, what);
  if (!reader.ok()) return reader.status();
  Sha256 hasher;
  for (int64_t offset = 0; offset < (*reader)->size();) {
    absl::StatusOr<absl::string_view> piece = (*reader)->ReadAt(offset, int64_t{1} << 30);
    if (!piece.ok()) return piece.status();
    hasher.Update(*piece);
    offset += static_cast<int64_t>(piece->size());
  }
  return hasher.HexDigest();
}

absl::StatusOr<std::unique_ptr<XetFileReader>> XetStore::OpenFile(const std::string& sha256) {
  absl::StatusOr<SqlRows> rows = database_->Run("SELECT terms FROM files WHERE sha256 = ? LIMIT 1", {sha256});
  if (!rows.ok()) return rows.status();
  if (rows->empty()) return absl::NotFoundError(absl::StrCat("file ", sha256, " is not stored as chunks"));
  return OpenTerms(UnpackTerms(rows->Text(0, 0)), absl::StrCat("file ", sha256));
}

absl::StatusOr<int64_t> XetStore::FileSize(const std::string& sha256, bool touch) {
  absl::StatusOr<SqlRows> rows = database_->Run("SELECT size FROM files WHERE sha256 = ? LIMIT 1", {sha256});
  if (!rows.ok()) return rows.status();
  if (rows->empty()) return absl::NotFoundError(absl::StrCat("file ", sha256, " is not stored as chunks"));
  const int64_t size = rows->Int(0, 0);
  if (touch) {
    // Note [Xet garbage collection]: the file and its xorbs get younger together, in one
    // transaction, so a collection either deleted the file first (then it is missing here, and
    // the push uploads it) or keeps both.
    const int64_t now = absl::ToUnixSeconds(absl::Now());
    bool found = false;
    absl::Status touched = database_->Transaction([&](SqlSession& session) -> absl::Status {
      absl::StatusOr<SqlRows> files =
          session.Run("UPDATE files SET created = ? WHERE sha256 = ? RETURNING terms", {now, sha256});
      if (!files.ok()) return files.status();
      found = !files->empty();
      std::set<XetHash> xorbs;
      for (size_t row = 0; row < files->size(); ++row) {
        for (const XetReconstructionTerm& term : UnpackTerms(files->Text(row, 0))) xorbs.insert(term.xorb_hash);
      }
      for (const XetHash& xorb : xorbs) {
        absl::Status status = session.Run("UPDATE xorbs SET created = ? WHERE hash = ?", {now, XetHashToString(xorb)}).status();
        if (!status.ok()) return status;
      }
      return absl::OkStatus();
    });
    if (!touched.ok()) return touched;
    if (!found) return absl::NotFoundError(absl::StrCat("file ", sha256, " is not stored as chunks"));
  }
  return size;
}

std::vector<size_t> XetStore::MissingChunks(const std::vector<XetHash>& chunk_hashes) {
  std::vector<size_t> missing;
  for (size_t index = 0; index < chunk_hashes.size(); ++index) {
    absl::StatusOr<SqlRows> rows = database_->Run("SELECT 1 FROM chunks WHERE hash = ?", {XetHashToString(chunk_hashes[index])});
    if (!rows.ok() || rows->empty()) missing.push_back(index);
  }
  return missing;
}

absl::Status XetStore::CreateBlobFromChunks(const std::string& sha256, int64_t size,
                                            const std::vector<XetHash>& chunk_hashes) {
  std::shared_lock gc_lock(gc_mutex_);
  FileRecord record;
  record.sha256 = sha256;
  std::vector<XetHashAndSize> leaves;
  std::map<XetHash, XorbRecord> xorbs;
  for (size_t index = 0; index < chunk_hashes.size(); ++index) {
    std::string xorb_text;
    int64_t chunk_index = 0;
    {
      absl::StatusOr<SqlRows> rows =
          database_->Run("SELECT xorb, chunk_index FROM chunks WHERE hash = ?", {XetHashToString(chunk_hashes[index])});
      if (!rows.ok()) return rows.status();
      if (rows->empty()) {
        return absl::FailedPreconditionError(absl::StrCat("create blob ", sha256, ": chunk ", index, " (",
                                                          XetHashToString(chunk_hashes[index]),
                                                          ") is not stored; upload it in a xorb first"));
      }
      xorb_text = rows->Text(0, 0);
      chunk_index = rows->Int(0, 1);
    }
    const XetHash xorb_hash = *XetHashFromString(xorb_text);
    if (!xorbs.count(xorb_hash)) {
      absl::StatusOr<XorbRecord> xorb = LoadXorb(xorb_hash);
      if (!xorb.ok()) return xorb.status();
      xorbs[xorb_hash] = *std::move(xorb);
    }
    const XorbRecord& xorb = xorbs[xorb_hash];
    const uint32_t chunk = static_cast<uint32_t>(chunk_index);
    const uint64_t chunk_size = xorb.unpacked_ends[chunk] - (chunk == 0 ? 0 : xorb.unpacked_ends[chunk - 1]);
    leaves.push_back({chunk_hashes[index], chunk_size});
    record.size += chunk_size;
    // Consecutive chunks of one xorb make one term.
    if (!record.terms.empty() && record.terms.back().xorb_hash == xorb_hash && record.terms.back().chunk_end == chunk) {
      ++record.terms.back().chunk_end;
      record.terms.back().unpacked_bytes += chunk_size;
    } else {
      record.terms.push_back({xorb_hash, chunk, chunk + 1, chunk_size});
    }
  }
  if (static_cast<int64_t>(record.size) != size) {
    return absl::InvalidArgumentError(absl::StrCat("create blob ", sha256, ": expected ", size,
                                                   " bytes but the chunks hold ", record.size));
  }
  // Note [One store, two views]: the chunks are the file; no blob is written.
  absl::StatusOr<std::string> actual = Sha256OfTerms(record.terms, absl::StrCat("create blob ", sha256));
  if (!actual.ok()) return actual.status();
  if (*actual != sha256) {
    return absl::DataLossError(absl::StrCat("create blob ", sha256, ": the chunks' ", size, " bytes hash to ", *actual));
  }
  return RecordFile(XetFileHash(leaves), record);
}

absl::StatusOr<int> XetStore::PutShard(absl::string_view serialized, const std::string& repository) {
  std::shared_lock gc_lock(gc_mutex_);
  absl::StatusOr<ParsedShard> shard = ParseShard(serialized);
  if (!shard.ok()) return shard.status();
  // Every xorb the shard describes must have been uploaded first.
  // Every xorb the shard describes must have been uploaded first, with the chunks it lists.
  for (const ShardXorb& xorb : shard->xorbs) {
    const std::string xorb_text = XetHashToString(xorb.xorb_hash);
    absl::StatusOr<XorbRecord> stored = LoadXorb(xorb.xorb_hash);
    if (!stored.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("shard: xorb ", xorb_text, " is described but was never uploaded"));
    }
    if (xorb.chunks.size() != stored->chunk_hashes.size()) {
      return absl::InvalidArgumentError(absl::StrCat("shard: xorb ", xorb_text, ": expected ",
                                                     stored->chunk_hashes.size(), " chunks but the shard lists ",
                                                     xorb.chunks.size()));
    }
    for (size_t index = 0; index < xorb.chunks.size(); ++index) {
      if (xorb.chunks[index].chunk_hash != stored->chunk_hashes[index]) {
        return absl::InvalidArgumentError(absl::StrCat(
            "shard: xorb ", xorb_text, " chunk ", index, ": chunk hash mismatch: the shard says ",
            XetHashToString(xorb.chunks[index].chunk_hash), ", the stored xorb holds ",
            XetHashToString(stored->chunk_hashes[index])));
      }
    }
  }
  // Check every file before storing any, so a bad shard records nothing.
  std::vector<FileRecord> files;
  for (const ShardFile& file : shard->files) {
    const std::string file_text = XetHashToString(file.file_hash);
    if (!file.verification_hashes.empty() && file.verification_hashes.size() != file.terms.size()) {
      return absl::InvalidArgumentError(absl::StrCat("shard: file ", file_text, ": ", file.verification_hashes.size(),
                                                     " verification entries for ", file.terms.size(), " terms"));
    }
    FileRecord record;
    std::vector<XetHashAndSize> chunks;
    for (size_t index = 0; index < file.terms.size(); ++index) {
      const ShardTerm& term = file.terms[index];
      const std::string where = absl::StrCat("shard: file ", file_text, " term ", index, " (xorb ",
                                             XetHashToString(term.xorb_hash), " chunks [", term.chunk_begin, ", ",
                                             term.chunk_end, ")): ");
      absl::StatusOr<XorbRecord> xorb = LoadXorb(term.xorb_hash);
      if (!xorb.ok()) return absl::InvalidArgumentError(where + "the xorb is not stored");
      if (term.chunk_begin >= term.chunk_end || term.chunk_end > xorb->chunk_hashes.size()) {
        return absl::InvalidArgumentError(absl::StrCat(where, "the xorb holds ", xorb->chunk_hashes.size(), " chunks"));
      }
      uint64_t unpacked = 0;
      for (uint32_t chunk = term.chunk_begin; chunk < term.chunk_end; ++chunk) {
        const uint64_t size = xorb->unpacked_ends[chunk] - (chunk == 0 ? 0 : xorb->unpacked_ends[chunk - 1]);
        chunks.push_back({xorb->chunk_hashes[chunk], size});
        unpacked += size;
      }
      if (unpacked != term.unpacked_bytes) {
        return absl::InvalidArgumentError(absl::StrCat(where, "expected ", term.unpacked_bytes,
                                                       " unpacked bytes but the chunks hold ", unpacked));
      }
      if (!file.verification_hashes.empty()) {
        XetHash expected = XetVerificationHash(xorb->chunk_hashes, term.chunk_begin, term.chunk_end);
        if (expected != file.verification_hashes[index]) {
          return absl::InvalidArgumentError(absl::StrCat(where, "verification hash ",
                                                         XetHashToString(file.verification_hashes[index]),
                                                         " does not match the stored chunks (", XetHashToString(expected), ")"));
        }
      }
      record.terms.push_back({term.xorb_hash, term.chunk_begin, term.chunk_end, unpacked});
      record.size += unpacked;
    }
    XetHash computed = XetFileHash(chunks);
    if (computed != file.file_hash) {
      return absl::InvalidArgumentError(absl::StrCat("shard: file ", file_text, ": its terms reconstruct file ",
                                                     XetHashToString(computed)));
    }
    // The sha256 is what commits and every other view name the file by: check it against the
    // bytes unless this very file (same Xet file hash, so the same bytes) was checked before.
    const std::string what = absl::StrCat("shard: file ", file_text);
    absl::StatusOr<FileRecord> known = LoadFile(file.file_hash);
    if (known.ok() && known->size == record.size && (!file.sha256 || *file.sha256 == known->sha256)) {
      record.sha256 = known->sha256;
    } else {
      absl::StatusOr<std::string> actual = Sha256OfTerms(record.terms, what);
      if (!actual.ok()) return actual.status();
      if (file.sha256 && *file.sha256 != *actual) {
        return absl::InvalidArgumentError(absl::StrCat(what, ": the shard gives sha256 ", *file.sha256,
                                                       " but its bytes hash to ", *actual));
      }
      record.sha256 = *actual;
    }
    files.push_back(std::move(record));
  }
  // Note [One store, two views]: each file is recorded as its chunks, once all were checked.
  for (size_t index = 0; index < files.size(); ++index) {
    if (absl::Status status = RecordFile(shard->files[index].file_hash, files[index]); !status.ok()) return status;
    if (absl::Status status = Grant(shard->files[index].file_hash, repository); !status.ok()) return status;
  }
  return 1;
}

absl::StatusOr<XetReconstruction> XetStore::Reconstruct(const XetHash& file_hash,
                                                        std::optional<std::pair<uint64_t, uint64_t>> byte_range) {
  absl::StatusOr<FileRecord> file = LoadFile(file_hash);
  if (!file.ok()) return file.status();
  uint64_t first = 0;
  uint64_t last = file->size == 0 ? 0 : file->size - 1;
  if (byte_range) {
    if (byte_range->first >= file->size || byte_range->first > byte_range->second) {
      return absl::OutOfRangeError(absl::StrCat("reconstruct file ", XetHashToString(file_hash), ": range ",
                                                byte_range->first, "-", byte_range->second, " outside its ",
                                                file->size, " bytes"));
    }
    first = byte_range->first;
    last = std::min(byte_range->second, last);
  }
  XetReconstruction plan;
  if (file->size == 0) return plan;
  std::map<XetHash, XorbRecord> xorbs;
  uint64_t term_start = 0;
  bool started = false;
  for (const XetReconstructionTerm& stored : file->terms) {
    const uint64_t term_end = term_start + stored.unpacked_bytes;  // exclusive
    if (term_end <= first || term_start > last) {
      term_start = term_end;
      continue;
    }
    if (!xorbs.count(stored.xorb_hash)) {
      absl::StatusOr<XorbRecord> xorb = LoadXorb(stored.xorb_hash);
      if (!xorb.ok()) return absl::DataLossError(std::string(xorb.status().message()));
      xorbs[stored.xorb_hash] = *std::move(xorb);
    }
    const XorbRecord& xorb = xorbs[stored.xorb_hash];
    auto chunk_start = [&](uint32_t chunk) -> uint64_t { return chunk == 0 ? 0 : xorb.unpacked_ends[chunk - 1]; };
    // Trim whole chunks outside [first, last] so a small range fetches little.
    XetReconstructionTerm term = stored;
    uint64_t position = term_start;
    while (position + (xorb.unpacked_ends[term.chunk_begin] - chunk_start(term.chunk_begin)) <= first) {
      position += xorb.unpacked_ends[term.chunk_begin] - chunk_start(term.chunk_begin);
      ++term.chunk_begin;
    }
    uint64_t end_position = term_end;
    while (term.chunk_end - 1 > term.chunk_begin &&
           end_position - (xorb.unpacked_ends[term.chunk_end - 1] - chunk_start(term.chunk_end - 1)) > last) {
      end_position -= xorb.unpacked_ends[term.chunk_end - 1] - chunk_start(term.chunk_end - 1);
      --term.chunk_end;
    }
    term.unpacked_bytes = end_position - position;
    if (!started) {
      plan.offset_into_first_range = first - position;
      started = true;
    }
    plan.terms.push_back(term);
    XetFetchRange fetch{term.xorb_hash, term.chunk_begin, term.chunk_end,
                        term.chunk_begin == 0 ? 0 : xorb.packed_ends[term.chunk_begin - 1],
                        uint64_t{xorb.packed_ends[term.chunk_end - 1]} - 1};
    bool duplicate = std::any_of(plan.fetches.begin(), plan.fetches.end(), [&](const XetFetchRange& other) {
      return other.xorb_hash == fetch.xorb_hash && other.chunk_begin == fetch.chunk_begin && other.chunk_end == fetch.chunk_end;
    });
    if (!duplicate) plan.fetches.push_back(fetch);
    term_start = term_end;
  }
  return plan;
}

absl::StatusOr<std::string> XetStore::DedupShard(const XetHash& chunk_hash) {
  // Only 1 chunk in 1024 (and each file's first) is ever queried, so one answer must cover a long
  // run: besides the xorb holding the chunk, it describes the other xorbs of the files that use
  // that xorb (a re-uploaded checkpoint then dedups against the whole previous version).
  constexpr int kMaxFiles = 8;
  constexpr size_t kMaxXorbs = 64;
  std::vector<XetHash> xorb_hashes;
  {
    absl::StatusOr<SqlRows> chunk = database_->Run("SELECT xorb FROM chunks WHERE hash = ?", {XetHashToString(chunk_hash)});
    if (!chunk.ok()) return chunk.status();
    if (chunk->empty()) {
      return absl::NotFoundError(absl::StrCat("global dedup: chunk ", XetHashToString(chunk_hash), " is not stored"));
    }
    const std::string first_xorb = chunk->Text(0, 0);
    xorb_hashes.push_back(*XetHashFromString(first_xorb));
    absl::StatusOr<SqlRows> files = database_->Run(
        "SELECT f.terms FROM file_xorbs x JOIN files f ON f.hash = x.file WHERE x.xorb = ? LIMIT ?",
        {first_xorb, int64_t{kMaxFiles}});
    if (!files.ok()) return files.status();
    for (size_t row = 0; row < files->size() && xorb_hashes.size() < kMaxXorbs; ++row) {
      for (const XetReconstructionTerm& term : UnpackTerms(files->Text(row, 0))) {
        if (xorb_hashes.size() >= kMaxXorbs) break;
        if (std::find(xorb_hashes.begin(), xorb_hashes.end(), term.xorb_hash) == xorb_hashes.end()) {
          xorb_hashes.push_back(term.xorb_hash);
        }
      }
    }
  }
  std::vector<ShardXorb> described_xorbs;
  for (const XetHash& xorb_hash : xorb_hashes) {
    absl::StatusOr<XorbRecord> xorb = LoadXorb(xorb_hash);
    if (!xorb.ok()) continue;  // collected meanwhile
    ShardXorb described;
    described.xorb_hash = xorb_hash;
    described.unpacked_bytes = xorb->unpacked_ends.empty() ? 0 : xorb->unpacked_ends.back();
    described.serialized_bytes = static_cast<uint32_t>(xorb->file_bytes);
    for (size_t index = 0; index < xorb->chunk_hashes.size(); ++index) {
      const uint32_t start = index == 0 ? 0 : xorb->unpacked_ends[index - 1];
      described.chunks.push_back({xorb->chunk_hashes[index], start, xorb->unpacked_ends[index] - start, 0});
    }
    described_xorbs.push_back(std::move(described));
  }
  // The lookup tables want xorbs in hash order (the client's BTreeMap of [u64; 4] words).
  std::sort(described_xorbs.begin(), described_xorbs.end(), [](const ShardXorb& left, const ShardXorb& right) {
    for (int word = 0; word < 4; ++word) {
      uint64_t left_word, right_word;
      std::memcpy(&left_word, left.xorb_hash.data() + 8 * word, 8);
      std::memcpy(&right_word, right.xorb_hash.data() + 8 * word, 8);
      if (left_word != right_word) return left_word < right_word;
    }
    return false;
  });
  XetHash key;
  RAND_bytes(key.data(), static_cast<int>(key.size()));
  return WriteDedupShard(described_xorbs, key, static_cast<uint64_t>(absl::ToUnixSeconds(absl::Now() + absl::Hours(1))));
}

absl::StatusOr<XetHash> XetStore::FileHashForBlob(const std::string& sha256, int64_t size) {
  // Without the lock only when the view exists and the blob is gone: a view recorded by another
  // thread that has not yet released the blob (RecordFile, then ReleaseBlob, below) is waited for,
  // so that when this returns the file is stored once.
  if (std::optional<XetHash> existing = FirstFileHash(database_->Run(kFileBySha256, {sha256, size}));
      existing.has_value() && (size == 0 || !blobs_.Size(sha256).ok())) {
    return *existing;
  }
  std::lock_guard xetify_lock(xetify_mutex_);
  std::shared_lock gc_lock(gc_mutex_);
  if (std::optional<XetHash> existing = FirstFileHash(database_->Run(kFileBySha256, {sha256, size}))) {
    if (absl::Status released = ReleaseBlob(sha256, size); !released.ok()) return released;
    return *existing;
  }
  FileRecord record;
  record.sha256 = sha256;
  record.size = static_cast<uint64_t>(size);
  std::vector<XetHashAndSize> file_chunks;
  if (size > 0) {
    const std::string path = blobs_.LocalPath(sha256);
    int descriptor = open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (descriptor < 0) return absl::NotFoundError(absl::StrCat("blob ", sha256, " is not stored"));
    void* mapping = mmap(nullptr, static_cast<size_t>(size), PROT_READ, MAP_SHARED, descriptor, 0);
    close(descriptor);
    if (mapping == MAP_FAILED) return absl::InternalError(absl::StrCat("map blob ", sha256, ": ", std::strerror(errno)));
    madvise(mapping, static_cast<size_t>(size), MADV_SEQUENTIAL);
    const auto* data = static_cast<const uint8_t*>(mapping);
    std::vector<uint64_t> ends = XetChunkBoundaries(data, static_cast<size_t>(size));
    // Group chunks into xorbs of at most 64 MiB and 8192 chunks, one term each.
    absl::Status status;
    size_t first_chunk = 0;
    while (first_chunk < ends.size() && status.ok()) {
      const uint64_t start = first_chunk == 0 ? 0 : ends[first_chunk - 1];
      size_t last_chunk = first_chunk;
      while (last_chunk + 1 < ends.size() && last_chunk + 1 - first_chunk < kXetMaxXorbChunks &&
             ends[last_chunk + 1] - start + 8 * (last_chunk + 2 - first_chunk) <= kXetMaxXorbBytes) {
        ++last_chunk;
      }
      ParsedXorb xorb;
      std::vector<uint64_t> relative_ends;
      std::vector<XetHashAndSize> leaves;
      uint64_t previous = start;
      uint64_t packed = 0;
      for (size_t chunk = first_chunk; chunk <= last_chunk; ++chunk) {
        XetHash hash = XetChunkHash(data + previous, ends[chunk] - previous);
        leaves.push_back({hash, ends[chunk] - previous});
        file_chunks.push_back(leaves.back());
        xorb.chunk_hashes.push_back(hash);
        packed += 8 + (ends[chunk] - previous);
        xorb.packed_ends.push_back(static_cast<uint32_t>(packed));
        xorb.unpacked_ends.push_back(static_cast<uint32_t>(ends[chunk] - start));
        relative_ends.push_back(ends[chunk] - start);
        previous = ends[chunk];
      }
      xorb.data_size = packed;
      xorb.hash = XetXorbHash(leaves);
      if (!LoadXorb(xorb.hash).ok()) {
        std::string serialized = WriteUncompressedXorb(
            absl::string_view(reinterpret_cast<const char*>(data + start), ends[last_chunk] - start), relative_ends);
        status = WriteXorbFile(xorb.hash, serialized);
        if (status.ok()) status = RecordXorb(xorb.hash, xorb);
      }
      record.terms.push_back({xorb.hash, 0, static_cast<uint32_t>(last_chunk - first_chunk + 1), ends[last_chunk] - start});
      first_chunk = last_chunk + 1;
    }
    munmap(mapping, static_cast<size_t>(size));
    if (!status.ok()) return status;
  }
  XetHash file_hash = XetFileHash(file_chunks);
  if (absl::Status status = RecordFile(file_hash, record); !status.ok()) return status;
  if (absl::Status released = ReleaseBlob(sha256, size); !released.ok()) return released;
  return file_hash;
}

absl::Status XetStore::ReleaseBlob(const std::string& sha256, int64_t size) {
  // Note [One store, two views]: the xorbs were durable (and, with a bucket, uploaded) before the
  // file was recorded, so from here every view reads the chunks; a download that opened the blob
  // keeps its descriptor. A crash before this line leaves both copies, and the next call for the
  // blob (FindMissingChunks, a HEAD) deletes it.
  if (size == 0 || !blobs_.Size(sha256).ok()) return absl::OkStatus();  // an empty blob costs nothing
  if (absl::Status status = blobs_.Delete(sha256); !status.ok()) {
    return absl::Status(status.code(), absl::StrCat("release blob ", sha256, " (stored as chunks now): ", status.message()));
  }
  if (on_blob_released_) on_blob_released_(size);
  return absl::OkStatus();
}

std::string XetStore::IssueToken(const std::string& repository, bool write, int64_t expires_unix_seconds) const {
  const std::string payload = absl::StrCat(repository, "|", write ? "write" : "read", "|", expires_unix_seconds);
  return absl::StrCat(absl::WebSafeBase64Escape(payload), ".", HmacHex(secret_, payload));
}

absl::StatusOr<XetTokenClaims> XetStore::CheckToken(absl::string_view authorization) const {
  absl::string_view token = authorization;
  if (!absl::ConsumePrefix(&token, "Bearer ")) {
    return absl::UnauthenticatedError("Xet CAS: expected 'Authorization: Bearer <CAS token>' from the xet token endpoint");
  }
  std::vector<absl::string_view> parts = absl::StrSplit(token, '.');
  std::string payload;
  if (parts.size() != 2 || !absl::WebSafeBase64Unescape(parts[0], &payload) ||
      !ConstantTimeEquals(HmacHex(secret_, payload), parts[1])) {
    return absl::UnauthenticatedError("Xet CAS: the token was not issued by this registry");
  }
  std::vector<std::string> fields = absl::StrSplit(payload, '|');
  XetTokenClaims claims;
  if (fields.size() != 3 || !absl::SimpleAtoi(fields[2], &claims.expires_unix_seconds)) {
    return absl::UnauthenticatedError("Xet CAS: malformed token");
  }
  claims.repository = fields[0];
  claims.write = fields[1] == "write";
  const int64_t now = absl::ToUnixSeconds(absl::Now());
  if (claims.expires_unix_seconds <= now) {
    return absl::UnauthenticatedError(absl::StrCat("Xet CAS: token for ", claims.repository, " expired ",
                                                   now - claims.expires_unix_seconds, " s ago; fetch a new one"));
  }
  return claims;
}

std::string XetStore::SignFetch(const XetHash& xorb_hash, int64_t expires_unix_seconds) const {
  return HmacHex(secret_, absl::StrCat("fetch|", XetHashToString(xorb_hash), "|", expires_unix_seconds));
}

bool XetStore::CheckFetch(const XetHash& xorb_hash, int64_t expires_unix_seconds, absl::string_view signature) const {
  return expires_unix_seconds > absl::ToUnixSeconds(absl::Now()) &&
         ConstantTimeEquals(SignFetch(xorb_hash, expires_unix_seconds), signature);
}

int64_t XetStore::stored_bytes() {
  absl::StatusOr<SqlRows> rows = database_->Run("SELECT COALESCE(SUM(file_bytes), 0) FROM xorbs");
  return rows.ok() && !rows->empty() ? rows->Int(0, 0) : 0;
}

int64_t XetStore::stored_chunks() {
  absl::StatusOr<SqlRows> rows = database_->Run("SELECT COUNT(*) FROM chunks");
  return rows.ok() && !rows->empty() ? rows->Int(0, 0) : 0;
}

absl::StatusOr<XetGarbageReport> XetStore::CollectGarbage(const std::set<std::string>& referenced_sha256,
                                                          absl::Time cutoff, bool dry_run) {
  std::unique_lock gc_lock(gc_mutex_);
  XetGarbageReport report;
  const int64_t cutoff_seconds = absl::ToUnixSeconds(cutoff);
  std::vector<std::string> doomed_files;
  std::set<std::string> used_xorbs;
  absl::StatusOr<SqlRows> files = database_->Run("SELECT hash, sha256, created, terms FROM files");
  if (!files.ok()) return files.status();
  for (size_t row = 0; row < files->size(); ++row) {
    if (!referenced_sha256.count(files->Text(row, 1)) && files->Int(row, 2) <= cutoff_seconds) {
      doomed_files.push_back(files->Text(row, 0));
      continue;
    }
    for (const XetReconstructionTerm& term : UnpackTerms(files->Text(row, 3))) {
      used_xorbs.insert(XetHashToString(term.xorb_hash));
    }
  }
  std::vector<std::pair<std::string, int64_t>> doomed_xorbs;
  absl::StatusOr<SqlRows> xorbs = database_->Run("SELECT hash, file_bytes, created FROM xorbs");
  if (!xorbs.ok()) return xorbs.status();
  for (size_t row = 0; row < xorbs->size(); ++row) {
    if (!used_xorbs.count(xorbs->Text(row, 0)) && xorbs->Int(row, 2) <= cutoff_seconds) {
      doomed_xorbs.emplace_back(xorbs->Text(row, 0), xorbs->Int(row, 1));
    }
  }
  report.deleted_files = static_cast<int64_t>(doomed_files.size());
  report.deleted_xorbs = static_cast<int64_t>(doomed_xorbs.size());
  for (const auto& [hash, bytes] : doomed_xorbs) report.freed_bytes += bytes;
  if (dry_run) return report;
  for (const std::string& hash : doomed_files) {
    // Only while still old: a push that found the file stored (FileSize with touch) refreshed it.
    absl::StatusOr<SqlRows> deleted =
        database_->Run("DELETE FROM files WHERE hash = ? AND created <= ? RETURNING hash", {hash, cutoff_seconds});
    if (!deleted.ok()) return deleted.status();
    if (deleted->empty()) {
      --report.deleted_files;
      continue;
    }
    for (const char* sql : {"DELETE FROM file_repositories WHERE file = ?", "DELETE FROM file_xorbs WHERE file = ?"}) {
      if (absl::Status status = database_->Run(sql, {hash}).status(); !status.ok()) return status;
    }
  }
  for (const auto& [hash, bytes] : doomed_xorbs) {
    // Only while still old: a file recorded meanwhile (on any replica) refreshed it (RecordFile).
    absl::StatusOr<SqlRows> deleted =
        database_->Run("DELETE FROM xorbs WHERE hash = ? AND created <= ? RETURNING hash", {hash, cutoff_seconds});
    if (!deleted.ok()) return deleted.status();
    if (deleted->empty()) {
      --report.deleted_xorbs;
      report.freed_bytes -= bytes;
      continue;
    }
    if (absl::Status status = database_->Run("DELETE FROM chunks WHERE xorb = ?", {hash}).status(); !status.ok()) {
      return status;
    }
    absl::StatusOr<XetHash> parsed = XetHashFromString(hash);
    if (parsed.ok()) unlink(XorbPath(*parsed).c_str());
    if (xorb_bucket_ != nullptr) {
      if (absl::Status status = xorb_bucket_->Delete(xorb_prefix_ + hash); !status.ok()) return status;
    }
  }
  return report;
}

}  // namespace flotilla::registry
