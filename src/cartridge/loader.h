// How the cartridge core obtains cartridge data from a path without depending
// on the file formats: the caller passes a loader (the formats module's
// reader in the server, a fake in tests).
#pragma once

#include <functional>
#include <string>

#include "cartridge/cartridge.h"
#include "core/status.h"

namespace cartserve {

// Loads the cartridge stored at `path`. Must be safe to call from several
// threads at once (the store and the residency manager call it unlocked).
using CartridgeLoader = std::function<Result<CartridgeData>(const std::string& path)>;

}  // namespace cartserve
