// The Hugging Face Hub HTTP API over a Registry, so huggingface_hub and transformers work with
// HF_ENDPOINT pointing at the registry's HTTP port, unchanged. Contract: huggingface_hub's
// file_download.py, hf_api.py and utils/_http.py (summarised in services/registry/README.md).
//
//   HubApi hub_api(registry, authorizer, /*public_url=*/"");
//   hub_api.AddRoutes(http_server);
//
// Thread-safe (httplib calls handlers from its worker threads).
#pragma once

#include <memory>
#include <string>

#include <absl/time/time.h>

#include "services/registry/auth.h"
#include "services/registry/registry.h"

namespace httplib {
class Server;
}

namespace flotilla::registry {

class HubHandlers;

class HubApi {
 public:
  // `public_url`: the base of absolute links (paging, upload hrefs); empty uses the request's Host.
  // `tree_page_size`: entries per page of the tree listing (the Hub pages by 1000).
  // `xet_token_lifetime`: how long a CAS token from the xet-*-token routes lasts (see xet_api.h).
  HubApi(Registry& registry, const Authorizer& authorizer, std::string public_url, int tree_page_size = 1000,
         absl::Duration xet_token_lifetime = absl::Minutes(15));
  void AddRoutes(httplib::Server& server);

 private:
  std::shared_ptr<HubHandlers> handlers_;
};

}  // namespace flotilla::registry
