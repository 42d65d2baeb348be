// A progress bar on stderr when it is a terminal; silent otherwise (logs and
// CI stay clean). Safe to call update() often: redraws at most ~10 times/s.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace cartserve {

class ProgressBar {
 public:
  ProgressBar(std::string label, uint64_t total);
  ~ProgressBar();
  ProgressBar(const ProgressBar&) = delete;
  ProgressBar& operator=(const ProgressBar&) = delete;

  void update(uint64_t done);
  void finish();
  bool enabled() const { return enabled_; }

 private:
  void draw(bool final);
  std::string label_;
  uint64_t total_;
  uint64_t done_ = 0;
  bool enabled_;
  bool finished_ = false;
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_draw_;
};

// "1.23 GiB", "512 KiB", "17 B"
std::string format_bytes(uint64_t bytes);
// "135.0M", "3.21B"
std::string format_count(uint64_t n);

}  // namespace cartserve
