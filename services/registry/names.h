// Repository names, revision references and file paths: what the registry accepts, and the
// error that says why it refuses the rest. Pure functions, thread-safe.
//
//   absl::StatusOr<ParsedReference> reference = ParseReference("acme/llama@v1");
//   // reference->namespace_name == "acme", reference->name == "llama", reference->revision == "v1"
//   absl::Status ok = ValidateRepositoryPath("model-00001-of-00002.safetensors");
#pragma once

#include <string>
#include <absl/strings/string_view.h>

#include <absl/status/status.h>
#include <absl/status/statusor.h>

namespace flotilla::registry {

// One part of "namespace/name", following the Hub's rules: 1 to 96 characters from letters,
// digits, '-', '_', '.'; no leading or trailing '-' or '.'; no "--" or "..".
// `what` ("namespace", "name") goes into the message.
absl::Status ValidateRepositoryPart(absl::string_view part, absl::string_view what);

// A branch or tag name: git's rules, simplified (no "..", no leading '-', no control characters,
// no '~^:?*[\\ ', not ending in '/' or ".lock", at most 200 characters).
absl::Status ValidateRefName(absl::string_view ref_name);

// A file path inside a repository: relative, '/'-separated, no empty, "." or ".." segments, no
// backslash, no NUL or other control character, at most 4096 bytes.
absl::Status ValidateRepositoryPath(absl::string_view path);

// A lowercase hex sha256 (64 characters).
absl::Status ValidateSha256(absl::string_view digest);

struct ParsedReference {
  std::string namespace_name;
  std::string name;
  std::string revision;  // empty when the text had no "@"
};

// "namespace/name[@revision]", with each part validated.
absl::StatusOr<ParsedReference> ParseReference(absl::string_view text);

// The name a served model gets when none is given: the repository's or folder's last component,
// lowercase, without a reference's revision ("acme/SmolLM2@v1" and "./SmolLM2/" serve as "smollm2").
std::string DefaultServedModelName(const std::string& folder_or_reference);

}  // namespace flotilla::registry
