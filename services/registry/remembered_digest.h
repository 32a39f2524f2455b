// A file's sha256 kept beside it, so `flotilla push` need not read an unchanged file again.
//
// Note [Remembered digests]: after the client hashes a file it pushes, or verifies one it pulled,
// it stores the digest in the file's extended attribute `user.flotilla.sha256`, with the size and
// modification time the file had when its bytes were read. A later push of that file, to any
// repository, uses the digest while both still match: it then asks the registry for the blob by
// sha256 before sending anything, so a file the registry already holds travels neither as bytes
// nor as a second hash pass (without it, a file new to a repository is streamed while it is
// hashed, Note [Streamed push], and one stored only as a plain blob elsewhere was sent again).
// Git's index trusts the same pair. A digest is recorded only for bytes that cannot change without
// moving the modification time: a push records it only when the file was last modified more than
// a second before it was read (a write in the same clock tick would keep the old time, git's
// "racy" case); a pull records the file it just wrote and renamed, after reading its time back
// (since Linux 6.13, a write after such a read gets a fine-grained, different time). A copy made
// with `cp -a` or `rsync -X` carries the attribute and the time together, and is the same bytes.
// Filesystems without user extended attributes just hash every time.
//
//   if (auto digest = RememberedSha256(path)) return *digest;
//   std::optional<FileStamp> before = StampFile(path);
//   std::string digest = ...;  // read and hash the file
//   if (before) RememberSha256(path, digest, *before, /*written_by_this_process=*/false);
//
// Thread-safe (plain system calls).
#pragma once

#include <time.h>

#include <cstdint>
#include <optional>
#include <string>

#include <absl/strings/string_view.h>

namespace flotilla::registry {

// A file's size and modification time, and when they were read.
struct FileStamp {
  int64_t size = 0;
  timespec modified{};
  timespec taken{};  // CLOCK_REALTIME, the clock file times come from
};

// The stamp of the file at `path` now; nullopt if it cannot be stat'ed.
std::optional<FileStamp> StampFile(const std::string& path);

// The digest recorded for the file at `path`, if one is and the file's size and modification time
// still match it.
std::optional<std::string> RememberedSha256(const std::string& path);

// Records `sha256` for the file at `path`, whose bytes were read (or written) after `read_as` was
// taken. Best effort: nothing is recorded when the file's size or time moved since, when it was
// modified less than a second before `read_as` was taken and `written_by_this_process` is false,
// or when the filesystem refuses user extended attributes.
void RememberSha256(const std::string& path, absl::string_view sha256, const FileStamp& read_as,
                    bool written_by_this_process);

}  // namespace flotilla::registry
