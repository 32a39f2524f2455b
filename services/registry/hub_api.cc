#include "services/registry/hub_api.h"

#include <httplib.h>

namespace flotilla::registry {

void HubApi::AddRoutes(httplib::Server&) {}

}  // namespace flotilla::registry
