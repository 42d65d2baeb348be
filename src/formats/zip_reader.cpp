#include "formats/zip_reader.h"

#include <zlib.h>

#include <algorithm>
#include <cstring>
#include <new>

namespace cartserve {

namespace {

constexpr uint32_t kLocalSig = 0x04034b50;
constexpr uint32_t kCentralSig = 0x02014b50;
constexpr uint32_t kEndSig = 0x06054b50;
constexpr uint32_t kEnd64Sig = 0x06064b50;
constexpr uint32_t kEnd64LocatorSig = 0x07064b50;
constexpr size_t kEndSize = 22;
constexpr size_t kEnd64LocatorSize = 20;
constexpr size_t kEnd64Size = 56;
constexpr size_t kCentralSize = 46;
constexpr size_t kLocalSize = 30;
constexpr uint16_t kZip64ExtraId = 0x0001;
// DEFLATE cannot expand data by more than ~1032:1; a larger claim is forged.
constexpr uint64_t kMaxDeflateRatio = 1032;

uint16_t rd16(const uint8_t* p) {
  return static_cast<uint16_t>(p[0] | (p[1] << 8));
}
uint32_t rd32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) |
         (static_cast<uint32_t>(p[2]) << 16) | (static_cast<uint32_t>(p[3]) << 24);
}
uint64_t rd64(const uint8_t* p) {
  return static_cast<uint64_t>(rd32(p)) | (static_cast<uint64_t>(rd32(p + 4)) << 32);
}

// [off, off + len) lies inside [0, size) without overflow.
bool in_bounds(uint64_t off, uint64_t len, uint64_t size) {
  return off <= size && len <= size - off;
}

// Printable form of an entry name for messages (names are untrusted bytes).
std::string printable(std::string_view s) {
  std::string out;
  for (unsigned char c : s.substr(0, 200)) {
    if (c >= 0x20 && c < 0x7f) {
      out += static_cast<char>(c);
    } else {
      out += fmt::format("\\x{:02x}", c);
    }
  }
  if (s.size() > 200) out += "...";
  return out;
}

}  // namespace

uint32_t zip_crc32(std::span<const uint8_t> bytes, uint32_t crc) {
  return static_cast<uint32_t>(
      crc32_z(crc, reinterpret_cast<const Bytef*>(bytes.data()), bytes.size()));
}

Result<ZipReader> ZipReader::open(const std::string& path, const ZipLimits& limits) {
  CS_ASSIGN_OR_RETURN(MappedFile file, MappedFile::open(path));
  ZipReader r;
  r.file_ = std::move(file);
  r.bytes_ = r.file_.bytes();
  r.label_ = path;
  r.limits_ = limits;
  CS_RETURN_IF_ERROR(r.parse());
  return r;
}

Result<ZipReader> ZipReader::open_bytes(std::span<const uint8_t> bytes, std::string label,
                                        const ZipLimits& limits) {
  ZipReader r;
  r.bytes_ = bytes;
  r.label_ = std::move(label);
  r.limits_ = limits;
  CS_RETURN_IF_ERROR(r.parse());
  return r;
}

Status ZipReader::parse() {
  const uint8_t* d = bytes_.data();
  const uint64_t size = bytes_.size();
  const auto corrupt = [&](std::string what) {
    return make_error(ErrorCode::kCorrupt, "'{}' is not a valid zip archive: {}", label_, what);
  };
  if (size < kEndSize) {
    return corrupt(fmt::format("{} bytes is too short for a zip archive", size));
  }

  // End of central directory: the last signature whose comment fits the file.
  uint64_t end_pos = UINT64_MAX;
  const uint64_t scan_floor = size > kEndSize + 0xffff ? size - kEndSize - 0xffff : 0;
  for (uint64_t p = size - kEndSize + 1; p-- > scan_floor;) {
    if (rd32(d + p) == kEndSig && p + kEndSize + rd16(d + p + 20) <= size) {
      end_pos = p;
      break;
    }
  }
  if (end_pos == UINT64_MAX) return corrupt("no end of central directory record");
  const uint8_t* end = d + end_pos;
  uint64_t disk = rd16(end + 4), cd_disk = rd16(end + 6);
  uint64_t count_disk = rd16(end + 8), count = rd16(end + 10);
  uint64_t cd_size = rd32(end + 12), cd_offset = rd32(end + 16);
  uint64_t records_start = end_pos;  // entries and directory must end before this

  // ZIP64 end record, located through the locator just before the end record.
  if (end_pos >= kEnd64LocatorSize && rd32(d + end_pos - kEnd64LocatorSize) == kEnd64LocatorSig) {
    const uint8_t* loc = d + end_pos - kEnd64LocatorSize;
    const uint64_t z64_pos = rd64(loc + 8);
    if (rd32(loc + 16) > 1) {
      return make_error(ErrorCode::kUnsupported, "'{}': multi-disk zip archives are not supported",
                        label_);
    }
    if (!in_bounds(z64_pos, kEnd64Size, end_pos - kEnd64LocatorSize)) {
      return corrupt(fmt::format("ZIP64 end record offset {} is outside the file", z64_pos));
    }
    const uint8_t* z = d + z64_pos;
    if (rd32(z) != kEnd64Sig) return corrupt("bad ZIP64 end record signature");
    disk = rd32(z + 16);
    cd_disk = rd32(z + 20);
    count_disk = rd64(z + 24);
    count = rd64(z + 32);
    cd_size = rd64(z + 40);
    cd_offset = rd64(z + 48);
    records_start = z64_pos;
  } else if (count == 0xffff || cd_size == 0xffffffffu || cd_offset == 0xffffffffu) {
    return corrupt("end record needs ZIP64 values but has no ZIP64 locator");
  }
  if (disk != 0 || cd_disk != 0 || count_disk != count) {
    return make_error(ErrorCode::kUnsupported, "'{}': multi-disk zip archives are not supported",
                      label_);
  }
  if (!in_bounds(cd_offset, cd_size, records_start)) {
    return corrupt(fmt::format("central directory [{}, +{}) is outside the file (records at {})",
                               cd_offset, cd_size, records_start));
  }
  if (count > limits_.max_entries || count > cd_size / kCentralSize) {
    return corrupt(
        fmt::format("{} entries cannot fit a {}-byte central directory", count, cd_size));
  }

  entries_.clear();
  index_.clear();
  entries_.reserve(static_cast<size_t>(count));
  uint64_t pos = cd_offset;
  const uint64_t cd_end = cd_offset + cd_size;
  for (uint64_t i = 0; i < count; ++i) {
    if (!in_bounds(pos, kCentralSize, cd_end) || rd32(d + pos) != kCentralSig) {
      return corrupt(fmt::format("central directory entry {} at offset {} is malformed", i, pos));
    }
    const uint8_t* h = d + pos;
    const uint16_t name_len = rd16(h + 28), extra_len = rd16(h + 30), comment_len = rd16(h + 32);
    const uint64_t var_len = uint64_t{name_len} + extra_len + comment_len;
    if (!in_bounds(pos + kCentralSize, var_len, cd_end)) {
      return corrupt(fmt::format("central directory entry {} runs past the directory", i));
    }
    ZipEntry e;
    e.flags = rd16(h + 8);
    e.method = rd16(h + 10);
    e.crc32 = rd32(h + 16);
    e.compressed_size = rd32(h + 20);
    e.uncompressed_size = rd32(h + 24);
    uint64_t disk_start = rd16(h + 34);
    e.local_header_offset = rd32(h + 42);
    e.name.assign(reinterpret_cast<const char*>(h + kCentralSize), name_len);

    // ZIP64 extra field: the 64-bit values of the fields saturated above, in order.
    const uint8_t* x = h + kCentralSize + name_len;
    const uint8_t* x_end = x + extra_len;
    while (x_end - x >= 4) {
      const uint16_t id = rd16(x), len = rd16(x + 2);
      if (len > x_end - x - 4) {
        return corrupt(
            fmt::format("entry '{}' has an extra field past its end", printable(e.name)));
      }
      if (id == kZip64ExtraId) {
        const uint8_t* f = x + 4;
        const uint8_t* f_end = f + len;
        const auto take64 = [&](uint64_t& v) -> bool {
          if (f_end - f < 8) return false;
          v = rd64(f);
          f += 8;
          return true;
        };
        if ((e.uncompressed_size == 0xffffffffu && !take64(e.uncompressed_size)) ||
            (e.compressed_size == 0xffffffffu && !take64(e.compressed_size)) ||
            (e.local_header_offset == 0xffffffffu && !take64(e.local_header_offset))) {
          return corrupt(
              fmt::format("entry '{}' has a short ZIP64 extra field", printable(e.name)));
        }
        if (disk_start == 0xffff) {
          if (f_end - f < 4) {
            return corrupt(
                fmt::format("entry '{}' has a short ZIP64 extra field", printable(e.name)));
          }
          disk_start = rd32(f);
        }
      }
      x += 4 + len;
    }
    if (e.uncompressed_size == 0xffffffffu || e.compressed_size == 0xffffffffu ||
        e.local_header_offset == 0xffffffffu) {
      return corrupt(fmt::format("entry '{}' needs a ZIP64 extra field", printable(e.name)));
    }
    if (disk_start != 0) {
      return make_error(ErrorCode::kUnsupported, "'{}': multi-disk zip archives are not supported",
                        label_);
    }
    if (e.flags & 0x0001) {
      return make_error(ErrorCode::kUnsupported, "'{}': entry '{}' is encrypted", label_,
                        printable(e.name));
    }
    if (e.method != 0 && e.method != 8) {
      return make_error(ErrorCode::kUnsupported,
                        "'{}': entry '{}' uses compression method {} (only stored and deflate "
                        "are supported)",
                        label_, printable(e.name), e.method);
    }
    if (e.method == 0 && e.compressed_size != e.uncompressed_size) {
      return corrupt(fmt::format("stored entry '{}' has compressed size {} != size {}",
                                 printable(e.name), e.compressed_size, e.uncompressed_size));
    }

    // Local header: inside the entry region, same name; data follows it.
    const uint64_t lh = e.local_header_offset;
    if (!in_bounds(lh, kLocalSize, cd_offset) || rd32(d + lh) != kLocalSig) {
      return corrupt(
          fmt::format("entry '{}' has no local header at offset {}", printable(e.name), lh));
    }
    const uint16_t l_name_len = rd16(d + lh + 26), l_extra_len = rd16(d + lh + 28);
    if (!in_bounds(lh + kLocalSize, uint64_t{l_name_len} + l_extra_len, cd_offset)) {
      return corrupt(
          fmt::format("local header of '{}' runs past the entry region", printable(e.name)));
    }
    if (l_name_len != name_len || std::memcmp(d + lh + kLocalSize, e.name.data(), name_len) != 0) {
      return corrupt(
          fmt::format("local header name differs from central name '{}'", printable(e.name)));
    }
    if (rd16(d + lh + 8) != e.method) {
      return corrupt(fmt::format("local header method of '{}' differs from the central one",
                                 printable(e.name)));
    }
    e.data_offset = lh + kLocalSize + l_name_len + l_extra_len;
    if (!in_bounds(e.data_offset, e.compressed_size, cd_offset)) {
      return corrupt(fmt::format("data of '{}' [{}, +{}) is outside the entry region [0, {})",
                                 printable(e.name), e.data_offset, e.compressed_size, cd_offset));
    }
    if (!index_.emplace(e.name, entries_.size()).second) {
      return corrupt(fmt::format("duplicate entry name '{}'", printable(e.name)));
    }
    entries_.push_back(std::move(e));
    pos += kCentralSize + var_len;
  }

  // Entries must not overlap (overlapping entries are a zip-bomb device).
  std::vector<const ZipEntry*> by_offset;
  by_offset.reserve(entries_.size());
  for (const auto& e : entries_)
    by_offset.push_back(&e);
  std::sort(by_offset.begin(), by_offset.end(), [](const ZipEntry* a, const ZipEntry* b) {
    return a->local_header_offset < b->local_header_offset;
  });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    const ZipEntry* a = by_offset[i - 1];
    if (a->data_offset + a->compressed_size > by_offset[i]->local_header_offset) {
      return corrupt(fmt::format("entries '{}' and '{}' overlap", printable(a->name),
                                 printable(by_offset[i]->name)));
    }
  }
  return {};
}

const ZipEntry* ZipReader::find(std::string_view name) const {
  auto it = index_.find(std::string(name));
  return it == index_.end() ? nullptr : &entries_[it->second];
}

Result<std::span<const uint8_t>> ZipReader::stored_span(const ZipEntry& e) const {
  if (e.method != 0) {
    return make_error(ErrorCode::kUnsupported,
                      "'{}': entry '{}' is compressed (method {}), no zero-copy view", label_,
                      printable(e.name), e.method);
  }
  return bytes_.subspan(e.data_offset, e.compressed_size);
}

Status ZipReader::verify_crc(const ZipEntry& e) const {
  CS_ASSIGN_OR_RETURN(auto span, stored_span(e));
  const uint32_t crc = zip_crc32(span);
  if (crc != e.crc32) {
    return make_error(ErrorCode::kCorrupt,
                      "'{}': entry '{}' fails its CRC-32 check ({:08x} != {:08x})", label_,
                      printable(e.name), crc, e.crc32);
  }
  return {};
}

Result<std::vector<uint8_t>> ZipReader::read(const ZipEntry& e) const {
  if (e.uncompressed_size > limits_.max_read_bytes) {
    return make_error(ErrorCode::kResourceExhausted,
                      "'{}': entry '{}' has {} bytes, more than the {}-byte read limit", label_,
                      printable(e.name), e.uncompressed_size, limits_.max_read_bytes);
  }
  std::vector<uint8_t> out;
  if (e.method == 0) {
    CS_RETURN_IF_ERROR(verify_crc(e));
    try {
      out.assign(bytes_.begin() + static_cast<ptrdiff_t>(e.data_offset),
                 bytes_.begin() + static_cast<ptrdiff_t>(e.data_offset + e.compressed_size));
    } catch (const std::bad_alloc&) {
      return make_error(ErrorCode::kResourceExhausted, "'{}': out of memory reading '{}'", label_,
                        printable(e.name));
    }
    return out;
  }
  // DEFLATE (raw stream).
  if (e.uncompressed_size > e.compressed_size * kMaxDeflateRatio + 1024) {
    return make_error(ErrorCode::kCorrupt,
                      "'{}': entry '{}' claims {} bytes from {} compressed bytes (impossible for "
                      "deflate)",
                      label_, printable(e.name), e.uncompressed_size, e.compressed_size);
  }
  try {
    out.resize(static_cast<size_t>(e.uncompressed_size));
  } catch (const std::bad_alloc&) {
    return make_error(ErrorCode::kResourceExhausted, "'{}': out of memory inflating '{}'", label_,
                      printable(e.name));
  }
  z_stream zs{};
  if (inflateInit2(&zs, -MAX_WBITS) != Z_OK) {
    return make_error(ErrorCode::kInternal, "zlib inflateInit2 failed");
  }
  const uint8_t* in = bytes_.data() + e.data_offset;
  uint64_t in_left = e.compressed_size;
  uint64_t out_given = 0;
  uint8_t scratch = 0;  // catches output beyond the declared size
  bool overflow = false;
  int rc = Z_OK;
  constexpr uint64_t kChunk = 1u << 30;  // zlib counts in 32 bits
  for (;;) {
    if (zs.avail_in == 0 && in_left > 0) {
      const uint64_t n = std::min(in_left, kChunk);
      zs.next_in = const_cast<Bytef*>(in);
      zs.avail_in = static_cast<uInt>(n);
      in += n;
      in_left -= n;
    }
    if (zs.avail_out == 0) {
      if (out_given == e.uncompressed_size) {
        if (overflow) break;
        overflow = true;
        zs.next_out = &scratch;
        zs.avail_out = 1;
      } else {
        const uint64_t n = std::min<uint64_t>(e.uncompressed_size - out_given, kChunk);
        zs.next_out = out.data() + out_given;
        zs.avail_out = static_cast<uInt>(n);
        out_given += n;
      }
    }
    rc = inflate(&zs, Z_NO_FLUSH);
    if (rc != Z_OK) break;  // Z_STREAM_END, or an error / no progress possible
  }
  const uint64_t produced = zs.total_out;
  inflateEnd(&zs);
  if (rc != Z_STREAM_END || produced != e.uncompressed_size) {
    return make_error(ErrorCode::kCorrupt,
                      "'{}': entry '{}' does not inflate to its declared {} bytes (zlib code {}, "
                      "{} bytes)",
                      label_, printable(e.name), e.uncompressed_size, rc, produced);
  }
  const uint32_t crc = zip_crc32(out);
  if (crc != e.crc32) {
    return make_error(ErrorCode::kCorrupt,
                      "'{}': entry '{}' fails its CRC-32 check ({:08x} != {:08x})", label_,
                      printable(e.name), crc, e.crc32);
  }
  return out;
}

}  // namespace cartserve
