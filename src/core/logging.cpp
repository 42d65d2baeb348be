#include "core/logging.h"

#include <spdlog/sinks/stdout_color_sinks.h>

#include <cstdlib>
#include <string>

namespace cartserve {

void set_log_level(std::string_view level) {
  const auto lvl = spdlog::level::from_str(std::string(level));
  if (lvl == spdlog::level::off && level != "off") return;
  spdlog::set_level(lvl);
}

void init_logging_from_env() {
  static bool done = false;
  if (!done) {
    auto logger = spdlog::stderr_color_mt("cartserve");
    spdlog::set_default_logger(logger);
    spdlog::set_pattern("[%Y-%m-%d %H:%M:%S.%e] [%^%l%$] %v");
    done = true;
  }
  if (const char* env = std::getenv("CARTSERVE_LOG_LEVEL")) set_log_level(env);
}

}  // namespace cartserve
