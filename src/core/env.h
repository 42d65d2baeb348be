// Opt-in switches read from the environment (experiments and measurement
// knobs that are not command-line options).
#pragma once

#include <cstdlib>
#include <cstring>

namespace cartserve {

// True when the variable `name` is set to exactly "1".
inline bool env_flag(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr && std::strcmp(v, "1") == 0;
}

}  // namespace cartserve
