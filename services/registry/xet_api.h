// The Xet side of the Hub HTTP API, as hf_xet 1.8.0 speaks it (https://huggingface.co/docs/xet,
// "CAS API" and "Authentication"):
//
// | route | for |
// | --- | --- |
// | `GET /api/models/{ns}/{name}/xet-{read,write}-token/{rev}` | a CAS token for one repository (JSON and `X-Xet-*` headers), granted by the registry's own tokens and scopes |
// | `POST /cas/v1/xorbs/{prefix}/{hash}` | a xorb: every chunk and the xorb hash verified (400 otherwise) |
// | `POST /cas/v1/shards` | a shard: each file checked against the stored xorbs (its sha256 against the bytes they reconstruct), then recorded as its chunks (Note [One store, two views] in xet_store.h) |
// | `GET /cas/v1/reconstructions/{file hash}` (+ `Range`) | the terms of a file and signed xorb range URLs |
// | `GET /cas/v1/fetch/{xorb hash}?expires=&signature=` (+ `Range`) | xorb bytes |
// | `GET /cas/v1/chunks/{prefix}/{chunk hash}` | global dedup: a shard describing the xorb that holds the chunk (keyed hashes); 404 when none does |
//
// /v2/ routes are absent on purpose: hf_xet falls back to /v1/ on 404.
//
//   XetApi xet_api(registry, authorizer, public_url, absl::Minutes(15));
//   xet_api.AddRoutes(server);
//   xet_api.Advertise(request, response, "acme", "llama", commit_id, entry);  // from /resolve/
//
// Thread-safe (httplib calls handlers from its worker threads).
#pragma once

#include <string>

#include <absl/time/time.h>

#include "services/registry/auth.h"
#include "services/registry/registry.h"

namespace httplib {
class Server;
struct Request;
struct Response;
}  // namespace httplib

namespace flotilla::registry {

class XetApi {
 public:
  XetApi(Registry& registry, const Authorizer& authorizer, std::string public_url, absl::Duration token_lifetime);
  void AddRoutes(httplib::Server& server);
  // Adds X-Xet-Hash and the xet-auth Link to a /resolve/ answer when the file has its Xet view;
  // otherwise the answer stays plain HTTP and the view is built in the background.
  void Advertise(const httplib::Request& request, httplib::Response& response, const std::string& namespace_name,
                 const std::string& name, const std::string& commit_id, const TreeEntry& entry);

 private:
  std::string BaseUrl(const httplib::Request& request) const;
  void Token(const httplib::Request& request, httplib::Response& response, const std::string& namespace_name,
             const std::string& name, bool write, const std::string& revision);
  void UploadXorb(const httplib::Request& request, httplib::Response& response, const std::string& hash);
  void UploadShard(const httplib::Request& request, httplib::Response& response);
  void Reconstruction(const httplib::Request& request, httplib::Response& response, const std::string& hash);
  void Fetch(const httplib::Request& request, httplib::Response& response, const std::string& hash);

  Registry& registry_;
  const Authorizer& authorizer_;
  std::string public_url_;
  absl::Duration token_lifetime_;
};

}  // namespace flotilla::registry
