// The OpenAI-compatible HTTP API on the gateway's HTTP port: POST /v1/chat/completions,
// POST /v1/completions, POST /v1/embeddings, GET /v1/models. Thin handlers: parse and validate
// with openai_api.h into the struct the gRPC API fills, prepare (prepare.h), run the generation
// core (generation.h), write what the renderers return — as one JSON body or as server-sent
// events. A streaming client that disconnects is noticed at its next write (or within 100 ms while
// waiting) and its choices are aborted on their workers.
//
//   bundle.add_http_routes = [&gateway](httplib::Server& server) { AddOpenAiRoutes(server, gateway); };
//
// Thread-safety: handlers run on httplib's pool; the gateway is thread-safe.
#pragma once

namespace httplib {
class Server;
}

namespace flotilla::gateway {

class Gateway;

void AddOpenAiRoutes(httplib::Server& server, Gateway& gateway);

}  // namespace flotilla::gateway
