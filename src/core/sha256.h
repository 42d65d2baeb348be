// SHA-256 (FIPS 180-4), streaming. Used for cartridge checksums and content hashes.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "core/status.h"

namespace cartserve {

class Sha256 {
 public:
  using Digest = std::array<uint8_t, 32>;

  Sha256();
  void update(const void* data, size_t n);
  void update(std::string_view s) { update(s.data(), s.size()); }
  Digest finish();  // the object must not be updated afterwards

  static Digest hash(const void* data, size_t n);
  static std::string hex(const Digest& d);

 private:
  void compress(const uint8_t* block);
  std::array<uint32_t, 8> h_;
  std::array<uint8_t, 64> buf_{};
  size_t buf_len_ = 0;
  uint64_t total_ = 0;
};

std::string sha256_hex(std::span<const uint8_t> bytes);
std::string sha256_hex(std::string_view s);
// Streams the file in chunks (no need to map it).
Result<std::string> sha256_file_hex(const std::string& path);

}  // namespace cartserve
