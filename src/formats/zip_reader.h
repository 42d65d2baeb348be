// ZIP reader for the subset torch.save writes (and a little more): local
// headers, central directory, ZIP64 extra fields and end records, STORED
// entries (zero-copy spans over the mmap) and DEFLATE entries (inflated
// through zlib, for archives rewritten by other tools).
//
// NOTE: the archive is untrusted input. open() validates every structure it
// relies on: end records inside the file, central directory inside the file
// and before the end records, every local header inside the file with a name
// equal to the central one, entry data inside [0, central directory), sizes of
// STORED entries equal, no duplicate names, no encryption, a single disk. A
// malformed archive is kCorrupt (kUnsupported for valid features we do not
// read: encryption, multi-disk, other compression methods). Nothing here
// can over-read the mapping once open() succeeded.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "core/mapped_file.h"
#include "core/status.h"

namespace cartserve {

struct ZipEntry {
  std::string name;
  uint16_t method = 0;  // 0 = STORED, 8 = DEFLATE
  uint16_t flags = 0;
  uint32_t crc32 = 0;
  uint64_t compressed_size = 0;    // bytes at data_offset
  uint64_t uncompressed_size = 0;  // bytes after inflating
  uint64_t local_header_offset = 0;
  uint64_t data_offset = 0;  // first byte of the (compressed) data in the archive
};

struct ZipLimits {
  uint64_t max_entries = 1u << 20;
  // Largest entry read() will inflate or copy (bounds the allocation a forged
  // size can ask for). STORED spans are never copied and have no limit.
  uint64_t max_read_bytes = uint64_t{16} << 30;
};

class ZipReader {
 public:
  ZipReader() = default;
  ZipReader(ZipReader&&) noexcept = default;
  ZipReader& operator=(ZipReader&&) noexcept = default;
  ZipReader(const ZipReader&) = delete;
  ZipReader& operator=(const ZipReader&) = delete;

  // Maps the file and parses its directory.
  static Result<ZipReader> open(const std::string& path, const ZipLimits& limits = {});
  // Parses an archive held in memory; `bytes` must outlive the reader.
  // `label` names the archive in error messages.
  static Result<ZipReader> open_bytes(std::span<const uint8_t> bytes, std::string label,
                                      const ZipLimits& limits = {});

  const std::vector<ZipEntry>& entries() const { return entries_; }
  const ZipEntry* find(std::string_view name) const;
  const std::string& label() const { return label_; }
  std::span<const uint8_t> archive_bytes() const { return bytes_; }

  // Zero-copy view of a STORED entry's data (kUnsupported for other methods).
  Result<std::span<const uint8_t>> stored_span(const ZipEntry& e) const;
  // The entry's uncompressed bytes (STORED copied, DEFLATE inflated); the CRC-32
  // is checked.
  Result<std::vector<uint8_t>> read(const ZipEntry& e) const;
  // Recomputes the CRC-32 of a STORED entry's data and compares it with the
  // central directory.
  Status verify_crc(const ZipEntry& e) const;

 private:
  Status parse();
  MappedFile file_;  // empty when the bytes are borrowed
  std::span<const uint8_t> bytes_;
  std::string label_;
  ZipLimits limits_;
  std::vector<ZipEntry> entries_;
  std::unordered_map<std::string, size_t> index_;
};

// CRC-32 (ISO 3309, as zip uses it), through zlib. `crc` continues a running value.
uint32_t zip_crc32(std::span<const uint8_t> bytes, uint32_t crc = 0);

}  // namespace cartserve
