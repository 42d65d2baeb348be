// ZIP writer for STORED entries laid out the way torch.save lays them out:
// every entry's data starts at a multiple of `alignment` (padding goes into a
// local-header extra field with id "FB", as PyTorchStreamWriter does), sizes
// and CRC-32 are in the local headers (no data descriptors), ZIP64 extra
// fields are added for sizes or offsets >= 4 GiB, and a ZIP64 end record plus
// locator are always written (as torch does). Timestamps are fixed, so equal
// inputs give byte-identical archives.
//
// NOTE: to a file, bytes go to `path.tmp.<pid>` and finish() renames onto
// `path`: readers never see a partial archive; a writer destroyed without
// finish() removes its temporary file.
#pragma once

#include <cstdint>
#include <cstdio>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/atomic_file.h"
#include "core/status.h"

namespace cartserve {

class ZipWriter {
 public:
  static Result<ZipWriter> create(const std::string& path, uint32_t alignment = 64);
  static ZipWriter to_memory(uint32_t alignment = 64);

  ZipWriter(ZipWriter&& o) noexcept = default;
  ZipWriter& operator=(ZipWriter&& o) noexcept = default;
  ZipWriter(const ZipWriter&) = delete;
  ZipWriter& operator=(const ZipWriter&) = delete;

  // Appends a STORED entry. Names must be unique, non-empty, < 64 KiB.
  Status add(std::string_view name, std::span<const uint8_t> data);
  Status add(std::string_view name, std::string_view text) {
    return add(
        name, std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(text.data()), text.size()));
  }
  // Writes ZIP64 extra fields for every following entry, as if it were large
  // (what Python's zipfile force_zip64 does); for interoperability tests.
  void set_force_zip64(bool on) { force_zip64_ = on; }
  // Writes the central directory and end records; for a file, renames it into place.
  Status finish();

  // The archive of a memory writer (complete after finish()).
  const std::vector<uint8_t>& buffer() const { return buffer_; }

 private:
  ZipWriter() = default;
  struct Central {
    std::string name;
    uint32_t crc = 0;
    uint64_t size = 0;
    uint64_t offset = 0;
    bool zip64 = false;
  };
  Status write(const void* data, size_t n);

  std::optional<AtomicFile> file_;  // a file writer (else memory)
  std::vector<uint8_t> buffer_;
  uint32_t alignment_ = 64;
  uint64_t offset_ = 0;
  std::vector<Central> central_;
  bool finished_ = false;
  bool force_zip64_ = false;
};

}  // namespace cartserve
