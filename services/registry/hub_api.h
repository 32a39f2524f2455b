// The Hugging Face Hub HTTP API over a Registry, so huggingface_hub and transformers work with
// HF_ENDPOINT pointing at the registry's HTTP port, unchanged. Contract: huggingface_hub's
// file_download.py, hf_api.py and utils/_http.py (summarised in services/registry/README.md).
//
//   HubApi hub_api(registry, authorizer, /*public_url=*/"");
//   hub_api.AddRoutes(http_server);
//
// Thread-safe (httplib calls handlers from its worker threads).
#pragma once

#include <string>

#include "services/registry/auth.h"
#include "services/registry/registry.h"

namespace httplib {
class Server;
}

namespace flotilla::registry {

class HubApi {
 public:
  HubApi(Registry& registry, const Authorizer& authorizer, std::string public_url)
      : registry_(registry), authorizer_(authorizer), public_url_(std::move(public_url)) {}
  void AddRoutes(httplib::Server& server);

 private:
  Registry& registry_;
  const Authorizer& authorizer_;
  std::string public_url_;
};

}  // namespace flotilla::registry
