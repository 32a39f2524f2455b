#include "services/registry/names.h"

#include <algorithm>
#include <cctype>
#include <filesystem>

#include <absl/strings/str_cat.h>
#include <absl/strings/str_split.h>
#include <absl/strings/match.h>

namespace flotilla::registry {
namespace {

bool IsPartCharacter(char character) {
  return (character >= 'a' && character <= 'z') || (character >= 'A' && character <= 'Z') ||
         (character >= '0' && character <= '9') || character == '-' || character == '_' || character == '.';
}

}  // namespace

absl::Status ValidateRepositoryPart(absl::string_view part, absl::string_view what) {
  auto invalid = [&](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat("invalid repository ", what, " '", part, "': ", why,
                                                   " (allowed: letters, digits, '-', '_', '.'; 1 to 96 characters; "
                                                   "no leading or trailing '-' or '.', no '--' or '..')"));
  };
  if (part.empty()) return invalid("it is empty");
  if (part.size() > 96) return invalid(absl::StrCat("it has ", part.size(), " characters"));
  for (char character : part) {
    if (!IsPartCharacter(character)) {
      return invalid(absl::StrCat("character '", absl::string_view(&character, 1), "' is not allowed"));
    }
  }
  if (part.front() == '-' || part.front() == '.' || part.back() == '-' || part.back() == '.') {
    return invalid("it starts or ends with '-' or '.'");
  }
  if (absl::StrContains(part, "--") || absl::StrContains(part, "..")) return invalid("it contains '--' or '..'");
  return absl::OkStatus();
}

absl::Status ValidateRefName(absl::string_view ref_name) {
  auto invalid = [&](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat("invalid branch or tag name '", ref_name, "': ", why));
  };
  if (ref_name.empty()) return invalid("it is empty");
  if (ref_name.size() > 200) return invalid("it is longer than 200 characters");
  if (ref_name.front() == '-' || ref_name.front() == '/' || ref_name.back() == '/' || ref_name.back() == '.') {
    return invalid("it starts with '-' or '/', or ends with '/' or '.'");
  }
  if (absl::StrContains(ref_name, "..") || absl::StrContains(ref_name, "//") || absl::StrContains(ref_name, "@{") ||
      absl::EndsWith(ref_name, ".lock")) {
    return invalid("it contains '..', '//', '@{' or ends with '.lock'");
  }
  for (char character : ref_name) {
    if (static_cast<unsigned char>(character) < 0x20 || character == 0x7f ||
        absl::string_view("~^:?*[\\ ").find(character) != absl::string_view::npos) {
      return invalid("it contains a control character or one of ~^:?*[\\ and space");
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateRepositoryPath(absl::string_view path) {
  auto invalid = [&](absl::string_view why) {
    std::string printable;
    for (char character : path) {
      if (static_cast<unsigned char>(character) < 0x20) {
        absl::StrAppend(&printable, "\\x", absl::Hex(static_cast<unsigned char>(character), absl::kZeroPad2));
      } else {
        printable.push_back(character);
      }
    }
    return absl::InvalidArgumentError(absl::StrCat("invalid file path '", printable, "': ", why));
  };
  if (path.empty()) return invalid("it is empty");
  if (path.size() > 4096) return invalid("it is longer than 4096 bytes");
  if (path.front() == '/') return invalid("it is absolute (paths are relative to the repository root)");
  for (char character : path) {
    if (character == '\0') return invalid("it contains a NUL byte");
    if (character == '\\') return invalid("it contains a backslash (use '/' as the separator)");
    if (static_cast<unsigned char>(character) < 0x20 || character == 0x7f) {
      return invalid("it contains a control character");
    }
  }
  for (absl::string_view segment : absl::StrSplit(path, '/')) {
    if (segment.empty()) return invalid("it has an empty segment ('//' or a trailing '/')");
    if (segment == "..") return invalid("it contains a '..' segment");
    if (segment == ".") return invalid("it contains a '.' segment");
  }
  return absl::OkStatus();
}

absl::Status ValidateSha256(absl::string_view digest) {
  bool valid = digest.size() == 64;
  for (char character : digest) {
    valid = valid && ((character >= '0' && character <= '9') || (character >= 'a' && character <= 'f'));
  }
  if (!valid) {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid sha256 '", digest.substr(0, 80), "': expected 64 lowercase hex digits"));
  }
  return absl::OkStatus();
}

absl::StatusOr<ParsedReference> ParseReference(absl::string_view text) {
  ParsedReference reference;
  absl::string_view repository = text;
  if (size_t at = text.find('@'); at != absl::string_view::npos) {
    repository = text.substr(0, at);
    reference.revision = std::string(text.substr(at + 1));
    if (reference.revision.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("invalid reference '", text, "': empty revision after '@'"));
    }
  }
  size_t slash = repository.find('/');
  if (slash == absl::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid reference '", text, "': expected namespace/name[@revision]"));
  }
  reference.namespace_name = std::string(repository.substr(0, slash));
  reference.name = std::string(repository.substr(slash + 1));
  if (absl::Status status = ValidateRepositoryPart(reference.namespace_name, "namespace"); !status.ok()) return status;
  if (absl::Status status = ValidateRepositoryPart(reference.name, "name"); !status.ok()) return status;
  return reference;
}

std::string DefaultServedModelName(const std::string& folder_or_reference) {
  std::string text = folder_or_reference;
  while (text.size() > 1 && text.back() == '/') text.pop_back();
  // A revision belongs to a reference, never to the name ("acme/llama@v1" serves as "llama").
  std::error_code error;
  if (!std::filesystem::is_directory(folder_or_reference, error)) {
    if (const size_t at = text.find('@'); at != std::string::npos) text.resize(at);
  }
  std::string name = std::filesystem::path(text).filename().string();
  std::transform(name.begin(), name.end(), name.begin(), [](unsigned char c) { return std::tolower(c); });
  return name;
}

}  // namespace flotilla::registry
