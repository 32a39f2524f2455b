#include "services/registry/kernel_manifest.h"

#include <map>
#include <regex>
#include <set>

#include <absl/strings/match.h>
#include <absl/strings/str_cat.h>
#include <absl/strings/str_join.h>
#include <nlohmann/json.hpp>

#include "services/registry/names.h"

namespace flotilla::registry {

const KernelManifestVariant* KernelManifest::Find(const std::string& variant) const {
  for (const KernelManifestVariant& entry : variants) {
    if (entry.name == variant) return &entry;
  }
  return nullptr;
}

absl::StatusOr<KernelManifest> ParseKernelManifest(absl::string_view text) {
  const auto fail = [](const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat(kKernelManifestPath, ": ", what));
  };
  nlohmann::ordered_json document = nlohmann::ordered_json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (document.is_discarded()) return fail("not valid JSON");
  if (!document.is_object()) return fail("expected a JSON object");
  KernelManifest manifest;
  if (!document.contains("name") || !document["name"].is_string() || document["name"].get<std::string>().empty()) {
    return fail("\"name\" must be a non-empty string");
  }
  manifest.name = document["name"].get<std::string>();
  if (!document.contains("variants") || !document["variants"].is_object() || document["variants"].empty()) {
    return fail("\"variants\" must be an object with at least one variant");
  }
  static const std::regex kVariantName(R"(torch[0-9]+\.[0-9]+-(cpu|cu[0-9]+)-[a-z0-9_]+)");
  static const std::regex kCapability(R"([0-9]+\.[0-9]+)");
  for (const auto& [name, entry] : document["variants"].items()) {
    const std::string where = absl::StrCat("variant \"", name, "\"");
    if (!std::regex_match(name, kVariantName)) {
      return fail(absl::StrCat(where, ": the name must be torch<major.minor>-<cpu|cu<version>>-<architecture>, "
                               "e.g. torch2.15-cu130-x86_64"));
    }
    if (!entry.is_object()) return fail(absl::StrCat(where, ": expected an object"));
    KernelManifestVariant variant;
    variant.name = name;
    if (!entry.contains("library") || !entry["library"].is_string()) {
      return fail(absl::StrCat(where, ": \"library\" must be a string (the file under build/", name, "/ to load)"));
    }
    variant.library = entry["library"].get<std::string>();
    if (absl::Status valid = ValidateRepositoryPath(variant.library); !valid.ok()) {
      return fail(absl::StrCat(where, ": \"library\": ", valid.message()));
    }
    if (entry.contains("cuda_capabilities")) {
      const auto& capabilities = entry["cuda_capabilities"];
      if (!capabilities.is_array()) return fail(absl::StrCat(where, ": \"cuda_capabilities\" must be a list like [\"8.0\"]"));
      for (const auto& capability : capabilities) {
        if (!capability.is_string() || !std::regex_match(capability.get<std::string>(), kCapability)) {
          return fail(absl::StrCat(where, ": \"cuda_capabilities\" entries look like \"8.0\", not ", capability.dump()));
        }
        variant.cuda_capabilities.push_back(capability.get<std::string>());
      }
      if (absl::StrContains(name, "-cpu-") && !variant.cuda_capabilities.empty()) {
        return fail(absl::StrCat(where, ": a CPU variant has no \"cuda_capabilities\""));
      }
    }
    variant.entry_json = entry.dump();
    manifest.variants.push_back(std::move(variant));
  }
  return manifest;
}

absl::Status CheckKernelTree(const KernelManifest& manifest, const std::vector<TreeEntry>& files) {
  std::set<std::string> paths;
  std::set<std::string> folders;
  for (const TreeEntry& file : files) {
    paths.insert(file.path);
    if (absl::StartsWith(file.path, "build/")) {
      const size_t slash = file.path.find('/', 6);
      if (slash != std::string::npos) folders.insert(file.path.substr(6, slash - 6));
    }
  }
  for (const KernelManifestVariant& variant : manifest.variants) {
    const std::string library = absl::StrCat("build/", variant.name, "/", variant.library);
    if (!paths.count(library)) {
      return absl::InvalidArgumentError(absl::StrCat(kKernelManifestPath, " lists variant ", variant.name,
                                                     " whose library ", library, " is not in the commit"));
    }
  }
  std::vector<std::string> unlisted;
  for (const std::string& folder : folders) {
    if (manifest.Find(folder) == nullptr) unlisted.push_back(folder);
  }
  if (!unlisted.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("build/ holds variants that ", kKernelManifestPath,
                                                   " does not list: ", absl::StrJoin(unlisted, ", ")));
  }
  return absl::OkStatus();
}

}  // namespace flotilla::registry
