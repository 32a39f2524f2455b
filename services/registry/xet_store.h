// The registry's Xet CAS: xorbs, the files they reconstruct, the chunk index, and the short-lived
// CAS tokens (https://huggingface.co/docs/xet; routes in hub_api.cc). Note [One store, two views]:
// a file that arrives through Xet (shard upload) or as chunks (a chunked `flotilla push`) is
// stored once, as its xorbs' chunks. Its shard's terms are verified against the stored xorbs and
// its sha256 against the bytes they reconstruct before the file is recorded; from then on every
// other path (commits, /resolve/, gRPC, `flotilla pull`, the worker) reads it by sha256 through a
// XetFileReader, which reconstructs any byte range from the chunks, so the blob store holds no
// second copy. A blob that arrived another way (`flotilla push`, LFS) gets its Xet view on first
// request (FileHashForBlob): it is chunked with the Xet chunker, its chunks written as
// uncompressed xorbs, and its reconstruction recorded, so hf_xet can download it through the CAS;
// then the blob is deleted, and the file too is read through its chunks from then on.
// Commits name sha256s; Registry::StoredSize finds them in the blob store or here, and a Xet file
// is recorded only once complete and verified.
//
// Tables (xorbs, chunks, files, file_xorbs, file_repositories) in <data_dir>/xet/xet.sqlite3 by
// default, or in the registry's PostgreSQL database (then the CAS token secret is kept there too,
// so every replica accepts the tokens any of them issued); on disk under <data_dir>/xet/:
// xorbs/<aa>/<xorb hash> and, with SQLite, token_secret.
//
//   auto store = XetStore::Open(data_dir, blobs);
//   absl::StatusOr<bool> inserted = (*store)->PutXorb(hash, body);         // verified
//   absl::StatusOr<int> result = (*store)->PutShard(body, "acme/llama");   // files recorded
//   absl::StatusOr<XetReconstruction> plan = (*store)->Reconstruct(file_hash, std::nullopt);
//   auto reader = (*store)->OpenFile(sha256);                              // the bytes, any range
//
// Thread-safe (a XetFileReader is not: one per download). Note [Xet garbage collection]: uploads
// take a shared lock that CollectGarbage takes exclusively; files unreferenced by any commit and
// xorbs no remaining file uses are deleted only past the grace period, so a shard uploaded just
// before its commit (or a xorb just before its shard) survives. Across replicas, where that lock
// does not reach and a file's xorbs are its only copy: recording a file refreshes the age of its
// xorbs in the same transaction (and fails if one is gone), a push finding a file stored
// refreshes the file and its xorbs together, and collection deletes a file or xorb only with a
// `created <= cutoff` condition in the DELETE itself, so whichever comes second sees the other.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <shared_mutex>
#include <string>
#include <thread>
#include <vector>

#include <absl/status/statusor.h>
#include <absl/strings/string_view.h>
#include <absl/time/time.h>

#include "services/registry/blob_store.h"
#include "services/registry/s3_client.h"
#include "services/registry/sql_database.h"
#include "services/registry/xet_format.h"
#include "services/registry/xet_hash.h"

namespace flotilla::registry {

struct XetReconstructionTerm {
  XetHash xorb_hash;
  uint32_t chunk_begin = 0;
  uint32_t chunk_end = 0;
  uint64_t unpacked_bytes = 0;
};

struct XetFetchRange {
  XetHash xorb_hash;
  uint32_t chunk_begin = 0;
  uint32_t chunk_end = 0;
  uint64_t byte_begin = 0;
  uint64_t byte_end_inclusive = 0;
};

struct XetReconstruction {
  uint64_t offset_into_first_range = 0;
  std::vector<XetReconstructionTerm> terms;
  std::vector<XetFetchRange> fetches;
};

struct XetTokenClaims {
  std::string repository;  // "namespace/name"
  bool write = false;
  int64_t expires_unix_seconds = 0;
};

// Reads a stored Xet file's bytes, reconstructed from its xorbs' chunks. Note [Reading a Xet file]
// (xet_store.cc): it decodes a window of up to 4 MiB of whole chunks at a time; a chunk stored
// without compression (hf_xet stores incompressible chunks so, and the registry's own xorbs are
// all so) is read straight into the window, skipping its header, by one preadv per window.
//
//   auto reader = store.OpenFile(sha256);
//   absl::StatusOr<absl::string_view> bytes = (*reader)->ReadAt(offset, 128 << 10);
//
// Not thread-safe: one reader per download. Holds the xorb files open, so garbage collection
// unlinking one meanwhile does not cut a download short.
class XetFileReader {
 public:
  ~XetFileReader();
  XetFileReader(const XetFileReader&) = delete;
  XetFileReader& operator=(const XetFileReader&) = delete;

  int64_t size() const { return size_; }
  // Up to `max_length` bytes from `offset` (at least one while offset < size()), valid until the
  // next call. OUT_OF_RANGE at or past the end; DATA_LOSS when a xorb is missing or does not decode.
  absl::StatusOr<absl::string_view> ReadAt(int64_t offset, int64_t max_length);
  // Appends the bytes [offset, offset + length) to `output`.
  absl::Status Read(int64_t offset, int64_t length, std::string* output);

 private:
  friend class XetStore;
  struct Xorb {
    std::string path;
    int descriptor = -1;
    std::vector<uint32_t> packed_ends;
    std::vector<uint32_t> unpacked_ends;
  };
  struct Term {
    Xorb* xorb = nullptr;
    uint32_t chunk_begin = 0;
    uint32_t chunk_end = 0;
    int64_t file_offset = 0;  // where the term's bytes start in the file
  };
  XetFileReader() = default;
  // Decodes the window of whole chunks that holds `offset`.
  absl::Status Fill(int64_t offset);

  std::string what_;  // "file <sha256>", for messages
  int64_t size_ = 0;
  std::vector<Term> terms_;
  std::vector<std::unique_ptr<Xorb>> xorbs_;
  std::string window_;  // decoded bytes [window_begin_, window_begin_ + window_.size()) of the file
  int64_t window_begin_ = 0;
  std::string packed_;   // scratch for compressed chunks
  std::string headers_;  // scratch for the headers of uncompressed chunks
};

struct XetGarbageReport {
  int64_t deleted_files = 0;
  int64_t deleted_xorbs = 0;
  int64_t freed_bytes = 0;
};

class XetStore {
 public:
  // `database`: where the tables live; nullptr opens <data_dir>/xet/xet.sqlite3. `xorb_bucket`:
  // with shared (S3) blob storage, xorbs are also written to <xorb_prefix><hash> in that bucket
  // and fetched from it into the local xorbs/ folder by a replica that lacks them; it must
  // outlive the store.
  static absl::StatusOr<std::unique_ptr<XetStore>> Open(const std::string& data_directory, BlobStore& blobs,
                                                        std::shared_ptr<SqlDatabase> database = nullptr,
                                                        S3Client* xorb_bucket = nullptr, std::string xorb_prefix = "");
  ~XetStore();

  // Verifies and stores a xorb; false when it was already stored (not an error).
  // INVALID_ARGUMENT for a malformed xorb or one whose content does not hash to `hash`.
  absl::StatusOr<bool> PutXorb(const XetHash& hash, absl::string_view serialized);

  // Verifies every file of an uploaded shard against the stored xorbs (chunk ranges, sizes,
  // verification hashes, the file hash, and the sha256 of the bytes they reconstruct) and records
  // it; grants the files to `repository`. 1 when registered. INVALID_ARGUMENT (nothing recorded) for a malformed
  // shard, a missing xorb, or any mismatch (the sha256 included).
  absl::StatusOr<int> PutShard(absl::string_view serialized, const std::string& repository);

  // The file recorded under `sha256` (a Xet upload or a chunked push), opened for reading; NOT_FOUND
  // when none is, DATA_LOSS when one of its xorbs is gone.
  absl::StatusOr<std::unique_ptr<XetFileReader>> OpenFile(const std::string& sha256);
  // The size of the file recorded under `sha256`, or NOT_FOUND. `touch` refreshes its age (a push
  // that found it stored will commit it soon: garbage collection's grace period must cover it).
  absl::StatusOr<int64_t> FileSize(const std::string& sha256, bool touch = false);

  // Indices of the chunks no stored xorb holds (for `flotilla push`'s chunk-level dedup).
  std::vector<size_t> MissingChunks(const std::vector<XetHash>& chunk_hashes);
  // Records the file `sha256` of `size` bytes as the stored chunks, in order (no bytes are copied:
  // see the Note), after checking their bytes hash to `sha256`. FAILED_PRECONDITION naming a chunk no xorb holds; INVALID_ARGUMENT when the chunks'
  // sizes do not add up to `size`; DATA_LOSS when their bytes do not hash to `sha256`.
  absl::Status CreateBlobFromChunks(const std::string& sha256, int64_t size, const std::vector<XetHash>& chunk_hashes);

  // The terms and xorb byte ranges of a file, or of the bytes [first, last] of it (OUT_OF_RANGE
  // past the end). NOT_FOUND for an unknown file.
  absl::StatusOr<XetReconstruction> Reconstruct(const XetHash& file_hash,
                                                std::optional<std::pair<uint64_t, uint64_t>> byte_range);

  // The global dedup answer for a chunk (WriteDedupShard of the xorb that first stored it, chunk
  // hashes keyed by a fresh random key); NOT_FOUND when no stored xorb holds it.
  absl::StatusOr<std::string> DedupShard(const XetHash& chunk_hash);

  // The Xet file hash of a stored blob, creating its Xet view first if it has none, after which the
  // blob (now a second copy) is deleted (see the Note).
  absl::StatusOr<XetHash> FileHashForBlob(const std::string& sha256, int64_t size);
  // The Xet file hash of a blob that has its Xet view already; nullopt otherwise (nothing is created).
  std::optional<XetHash> ExistingFileHashForBlob(const std::string& sha256, int64_t size);
  // Creates a blob's Xet view on a background thread (a HEAD /resolve/ must not wait for a large
  // file to be chunked and hashed); repeated requests for one blob are merged.
  void IndexInBackground(const std::string& sha256, int64_t size);
  // Only a repository a file was uploaded to or advertised by may reconstruct it.
  absl::Status Grant(const XetHash& file_hash, const std::string& repository);
  bool Granted(const XetHash& file_hash, const std::string& repository);

  // Called with a blob's size when its Xet view replaced it (for the stored-bytes statistics).
  void OnBlobReleased(std::function<void(int64_t)> callback) { on_blob_released_ = std::move(callback); }

  std::string XorbPath(const XetHash& hash) const;
  // XorbPath, after fetching the xorb from the shared bucket when this replica has no copy yet.
  // NOT_FOUND when no store holds it.
  absl::StatusOr<std::string> LocalXorbPath(const XetHash& hash);

  // CAS tokens: HMAC-SHA256 under a secret kept in the data directory (so tokens survive a restart).
  std::string IssueToken(const std::string& repository, bool write, int64_t expires_unix_seconds) const;
  // UNAUTHENTICATED for a missing, malformed, forged or expired token.
  absl::StatusOr<XetTokenClaims> CheckToken(absl::string_view authorization) const;
  // A signature for a xorb fetch URL (hf_xet fetches xorb ranges without its token, as from a
  // pre-signed URL).
  std::string SignFetch(const XetHash& xorb_hash, int64_t expires_unix_seconds) const;
  bool CheckFetch(const XetHash& xorb_hash, int64_t expires_unix_seconds, absl::string_view signature) const;

  // Serialized bytes of all stored xorbs, and how many chunks they hold.
  int64_t stored_bytes();
  int64_t stored_chunks();

  // See Note [Xet garbage collection]: `referenced_sha256` are the blobs some commit names.
  absl::StatusOr<XetGarbageReport> CollectGarbage(const std::set<std::string>& referenced_sha256, absl::Time cutoff,
                                                  bool dry_run);

 private:
  struct XorbRecord {
    std::vector<XetHash> chunk_hashes;
    std::vector<uint32_t> packed_ends;
    std::vector<uint32_t> unpacked_ends;
    uint64_t data_bytes = 0;
    uint64_t file_bytes = 0;  // the serialized xorb's size
  };
  struct FileRecord {
    std::string sha256;
    uint64_t size = 0;
    std::vector<XetReconstructionTerm> terms;
  };

  XetStore(std::string root, BlobStore& blobs, std::shared_ptr<SqlDatabase> database, std::string secret);
  absl::StatusOr<XorbRecord> LoadXorb(const XetHash& hash);
  absl::StatusOr<FileRecord> LoadFile(const XetHash& hash);
  absl::Status WriteXorbFile(const XetHash& hash, absl::string_view serialized);
  absl::Status RecordXorb(const XetHash& hash, const ParsedXorb& xorb);
  absl::Status RecordFile(const XetHash& hash, const FileRecord& file);
  // A reader over `terms` (file bytes in order); `what` names the file in messages.
  absl::StatusOr<std::unique_ptr<XetFileReader>> OpenTerms(const std::vector<XetReconstructionTerm>& terms,
                                                           const std::string& what);
  // The sha256 of the bytes `terms` reconstruct.
  absl::StatusOr<std::string> Sha256OfTerms(const std::vector<XetReconstructionTerm>& terms, const std::string& what);

  std::string root_;
  BlobStore& blobs_;
  std::shared_ptr<SqlDatabase> database_;  // thread-safe itself
  S3Client* xorb_bucket_ = nullptr;        // shared copies of the xorbs, or none
  std::string xorb_prefix_;
  std::string secret_;
  // Deletes the blob `sha256` once the file is recorded as chunks (nothing when it is gone).
  absl::Status ReleaseBlob(const std::string& sha256, int64_t size);
  std::function<void(int64_t)> on_blob_released_;
  std::mutex xetify_mutex_;      // one blob gets its Xet view at a time
  std::shared_mutex gc_mutex_;   // uploads shared, garbage collection exclusive

  // Background indexing (IndexInBackground): a queue served by one thread, stopped by the destructor.
  void IndexLoop();
  std::mutex index_mutex_;
  std::condition_variable index_ready_;
  std::deque<std::pair<std::string, int64_t>> index_queue_;  // guarded by index_mutex_
  std::set<std::string> index_pending_;                       // guarded by index_mutex_
  bool index_stopping_ = false;                               // guarded by index_mutex_
  std::thread index_thread_;
};

}  // namespace flotilla::registry
