// --kv-transfer-config on arbitrary text: the JSON parse and validation, then
// the router its "router" object describes, asked to route a request.
#include <cstddef>
#include <cstdint>

#include "cartridge/router.h"
#include "fuzz_util.h"
#include "server/kv_transfer_config.h"

using namespace cartserve;

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  fuzz::quiet_logs();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto cfg = parse_kv_transfer_config(std::string(fuzz::as_text(data, size)));
  if (!cfg.ok()) {
    if (cfg.status().message().empty()) __builtin_trap();
    return 0;
  }
  const CartridgeConnectorConfig& c = cfg->cartridge;
  RouterDeps deps;
  deps.default_cartridge_id = c.cartridges.empty() ? "" : c.cartridges.front().cartridge_id;
  deps.label_lookup = [](const std::string& key,
                         const std::string& value) -> Result<std::vector<std::string>> {
    if (key.empty()) return Status(ErrorCode::kNotFound, "no such label");
    return std::vector<std::string>{value};
  };
  auto router = make_router(c.router, deps);
  if (!router.ok()) return 0;
  (void)(*router)->describe();
  RoutingRequest req;
  req.params = {{"cartridge_id", "a"}, {"patient_id", "p1"}};
  req.labels = {{"patient_id", "p2"}};
  req.extras = {{"tenant", "t"}};
  (void)(*router)->route(req);
  (void)(*router)->route(RoutingRequest{});
  return 0;
}
