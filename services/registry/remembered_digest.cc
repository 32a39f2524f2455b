#include "services/registry/remembered_digest.h"

#include <sys/stat.h>
#include <sys/xattr.h>

#include <string>
#include <vector>

#include <absl/strings/numbers.h>
#include <absl/strings/str_cat.h>
#include <absl/strings/str_split.h>

namespace flotilla::registry {
namespace {

constexpr char kAttribute[] = "user.flotilla.sha256";

bool SameTime(const timespec& left, const timespec& right) {
  return left.tv_sec == right.tv_sec && left.tv_nsec == right.tv_nsec;
}

bool IsLowercaseHexDigest(absl::string_view text) {
  if (text.size() != 64) return false;
  for (char c : text) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

}  // namespace

std::optional<FileStamp> StampFile(const std::string& path) {
  struct stat status;
  if (stat(path.c_str(), &status) != 0 || !S_ISREG(status.st_mode)) return std::nullopt;
  FileStamp stamp;
  stamp.size = static_cast<int64_t>(status.st_size);
  stamp.modified = status.st_mtim;
  clock_gettime(CLOCK_REALTIME, &stamp.taken);
  return stamp;
}

std::optional<std::string> RememberedSha256(const std::string& path) {
  char value[160];
  const ssize_t length = getxattr(path.c_str(), kAttribute, value, sizeof(value));
  if (length <= 0) return std::nullopt;
  // "<sha256> <size> <modified seconds> <modified nanoseconds>"
  std::vector<absl::string_view> fields = absl::StrSplit(absl::string_view(value, static_cast<size_t>(length)), ' ');
  int64_t size = 0;
  int64_t seconds = 0;
  int64_t nanoseconds = 0;
  if (fields.size() != 4 || !IsLowercaseHexDigest(fields[0]) || !absl::SimpleAtoi(fields[1], &size) ||
      !absl::SimpleAtoi(fields[2], &seconds) || !absl::SimpleAtoi(fields[3], &nanoseconds)) {
    return std::nullopt;
  }
  std::optional<FileStamp> now = StampFile(path);
  if (!now || now->size != size || !SameTime(now->modified, {static_cast<time_t>(seconds), static_cast<long>(nanoseconds)})) {
    return std::nullopt;
  }
  return std::string(fields[0]);
}

void RememberSha256(const std::string& path, absl::string_view sha256, const FileStamp& read_as,
                    bool written_by_this_process) {
  if (!IsLowercaseHexDigest(sha256)) return;
  if (!written_by_this_process) {
    // Modified in the second before it was read: a write after the read could keep its time.
    const int64_t modified_ns = read_as.modified.tv_sec * 1'000'000'000LL + read_as.modified.tv_nsec;
    const int64_t taken_ns = read_as.taken.tv_sec * 1'000'000'000LL + read_as.taken.tv_nsec;
    if (taken_ns - modified_ns < 1'000'000'000LL) return;
  }
  std::optional<FileStamp> now = StampFile(path);
  if (!now || now->size != read_as.size || !SameTime(now->modified, read_as.modified)) return;
  const std::string value = absl::StrCat(sha256, " ", read_as.size, " ", read_as.modified.tv_sec, " ",
                                         read_as.modified.tv_nsec);
  setxattr(path.c_str(), kAttribute, value.data(), value.size(), 0);  // refused: the next push hashes
}

}  // namespace flotilla::registry
