// kernel.json: the manifest at the root of a kernel repository. It names the kernel and, for each
// prebuilt variant under build/<variant>/, the library to load and what the build supports, so a
// worker asks for its platform and gets one folder, or a NOT_FOUND that lists what there is.
//
//   {
//     "name": "rmsnorm",
//     "variants": {
//       "torch2.15-cpu-x86_64":   {"library": "librmsnorm.so"},
//       "torch2.15-cu130-x86_64": {"library": "librmsnorm.so", "cuda_capabilities": ["8.0", "9.0"]}
//     }
//   }
//
// Variant names are torch<major.minor>-<accelerator>-<architecture> (accelerator "cpu" or
// "cu<version>"). A commit to a kernel repository is refused unless its kernel.json parses, every
// variant it lists has build/<variant>/<library> in the tree, and every build/<variant>/ folder is
// listed. Other keys of a variant's entry are kept and handed to the caller as they are.
#pragma once

#include <string>
#include <vector>

#include <absl/status/statusor.h>
#include <absl/strings/string_view.h>

#include "services/registry/metadata_store.h"

namespace flotilla::registry {

inline constexpr char kKernelManifestPath[] = "kernel.json";

struct KernelManifestVariant {
  std::string name;                            // "torch2.15-cu130-x86_64"
  std::string library;                         // relative to build/<name>/
  std::vector<std::string> cuda_capabilities;  // "8.0", "9.0"; empty: any (and CPU variants)
  std::string entry_json;                      // the variant's whole entry, as written
};

struct KernelManifest {
  std::string name;
  std::vector<KernelManifestVariant> variants;

  const KernelManifestVariant* Find(const std::string& variant) const;
};

// Parses kernel.json; INVALID_ARGUMENT names the key at fault.
absl::StatusOr<KernelManifest> ParseKernelManifest(absl::string_view text);

// Checks the manifest against a commit's files (see the header comment).
absl::Status CheckKernelTree(const KernelManifest& manifest, const std::vector<TreeEntry>& files);

}  // namespace flotilla::registry
