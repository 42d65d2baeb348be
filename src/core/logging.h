// Logging goes through spdlog (stderr). Levels: CARTSERVE_LOG_LEVEL or --log-level.
#pragma once

#include <spdlog/spdlog.h>

#include <string_view>

namespace cartserve {

// "trace", "debug", "info", "warn", "error", "off"; unknown names keep the level.
void set_log_level(std::string_view level);
// Applies CARTSERVE_LOG_LEVEL if set; called once by the CLI.
void init_logging_from_env();

}  // namespace cartserve

#define LOG_DEBUG(...) SPDLOG_DEBUG(__VA_ARGS__)
#define LOG_INFO(...) spdlog::info(__VA_ARGS__)
#define LOG_WARN(...) spdlog::warn(__VA_ARGS__)
#define LOG_ERROR(...) spdlog::error(__VA_ARGS__)
