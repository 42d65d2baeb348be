// Cartridge ids: what a client may name a cartridge.
//
// NOTE: an id is 1..128 bytes of URL-unreserved characters (RFC 3986:
// A-Z a-z 0-9 - . _ ~), and not "." or "..". It can then stand as one path
// segment of /v1/cartridges/{id} without escaping, and never names a
// directory. '+' and '@' are outside the set on purpose: composite keys
// ("a+b", "a+b@rerotate", catalog.h) use them, so no registered id can take
// a composite's place, and no composite can collide with a registered id.
#pragma once

#include <string_view>

#include "core/status.h"

namespace cartserve {

inline constexpr size_t kMaxCartridgeIdBytes = 128;

// InvalidArgument naming the problem (empty, too long, a character outside
// the set, "." or ".."); `what` names the source in the message (e.g.
// "cartridge_id", "manifest field 'cartridge_id'").
Status validate_cartridge_id(std::string_view id, std::string_view what = "cartridge_id");
bool is_valid_cartridge_id(std::string_view id);

}  // namespace cartserve
