// Helpers shared by the libFuzzer targets (tests/fuzz/*_fuzz.cpp).
#pragma once

#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <span>
#include <string>
#include <string_view>

#include "core/logging.h"

namespace cartserve::fuzz {

// The repository root (fixtures), as CMake saw it.
inline std::string source_dir() {
  if (const char* env = std::getenv("CARTSERVE_SOURCE_DIR")) return env;
  return CARTSERVE_SOURCE_DIR;
}

// Parsers that only open paths (mmap) read the input through one in-memory
// file (memfd), rewritten for every input: no disk traffic, nothing left behind.
class MemFile {
 public:
  MemFile() : fd_(memfd_create("cartserve-fuzz", 0)) {
    if (fd_ < 0) std::abort();
    path_ = "/proc/self/fd/" + std::to_string(fd_);
  }
  ~MemFile() { close(fd_); }
  MemFile(const MemFile&) = delete;
  MemFile& operator=(const MemFile&) = delete;

  // Replaces the content; returns the path to open.
  const std::string& write(std::span<const uint8_t> bytes) {
    if (ftruncate(fd_, 0) != 0) std::abort();
    size_t done = 0;
    while (done < bytes.size()) {
      const ssize_t n =
          pwrite(fd_, bytes.data() + done, bytes.size() - done, static_cast<off_t>(done));
      if (n <= 0) std::abort();
      done += static_cast<size_t>(n);
    }
    return path_;
  }

 private:
  int fd_;
  std::string path_;
};

// Parsers log refusals; thousands of inputs a second must not flood stderr.
inline void quiet_logs() {
  spdlog::set_level(spdlog::level::off);
}

inline std::string_view as_text(const uint8_t* data, size_t size) {
  return {reinterpret_cast<const char*>(data), size};
}

}  // namespace cartserve::fuzz
