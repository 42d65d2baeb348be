#include "formats/zip_writer.h"

#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "formats/zip_reader.h"

namespace cartserve {

namespace {

constexpr uint32_t kMax32 = 0xffffffffu;
constexpr uint16_t kDosDate = 0x0021;  // 1980-01-01, fixed for reproducible archives
constexpr uint16_t kDosTime = 0;

void put16(std::vector<uint8_t>& b, uint16_t v) {
  b.push_back(static_cast<uint8_t>(v));
  b.push_back(static_cast<uint8_t>(v >> 8));
}
void put32(std::vector<uint8_t>& b, uint32_t v) {
  for (int i = 0; i < 4; ++i)
    b.push_back(static_cast<uint8_t>(v >> (8 * i)));
}
void put64(std::vector<uint8_t>& b, uint64_t v) {
  for (int i = 0; i < 8; ++i)
    b.push_back(static_cast<uint8_t>(v >> (8 * i)));
}
uint32_t sat32(uint64_t v) {
  return v >= kMax32 ? kMax32 : static_cast<uint32_t>(v);
}

}  // namespace

Result<ZipWriter> ZipWriter::create(const std::string& path, uint32_t alignment) {
  ZipWriter w;
  w.alignment_ = alignment == 0 ? 1 : alignment;
  CS_ASSIGN_OR_RETURN(AtomicFile f, AtomicFile::create(path));
  w.file_.emplace(std::move(f));
  return w;
}

ZipWriter ZipWriter::to_memory(uint32_t alignment) {
  ZipWriter w;
  w.alignment_ = alignment == 0 ? 1 : alignment;
  return w;
}

Status ZipWriter::write(const void* data, size_t n) {
  if (n == 0) return {};
  if (file_) {
    CS_RETURN_IF_ERROR(file_->write(data, n));
  } else {
    const auto* p = static_cast<const uint8_t*>(data);
    buffer_.insert(buffer_.end(), p, p + n);
  }
  offset_ += n;
  return {};
}

Status ZipWriter::add(std::string_view name, std::span<const uint8_t> data) {
  if (finished_) return make_error(ErrorCode::kFailedPrecondition, "zip writer already finished");
  if (name.empty() || name.size() >= 0xffff) {
    return make_error(ErrorCode::kInvalidArgument, "zip entry name must have 1..65534 bytes");
  }
  for (const auto& c : central_) {
    if (c.name == name) {
      return make_error(ErrorCode::kInvalidArgument, "duplicate zip entry '{}'", name);
    }
  }
  const bool zip64 = force_zip64_ || data.size() >= kMax32 || offset_ >= kMax32;
  const uint64_t base = offset_ + 30 + name.size() + (zip64 ? 20 : 0);
  uint64_t pad = (alignment_ - base % alignment_) % alignment_;
  if (pad != 0 && pad < 4) pad += alignment_;  // an extra field needs 4 header bytes

  Central c;
  c.name = std::string(name);
  c.crc = zip_crc32(data);
  c.size = data.size();
  c.offset = offset_;
  c.zip64 = zip64;

  std::vector<uint8_t> h;
  put32(h, 0x04034b50);
  put16(h, zip64 ? 45 : 20);  // version needed
  put16(h, 0);                // flags
  put16(h, 0);                // STORED
  put16(h, kDosTime);
  put16(h, kDosDate);
  put32(h, c.crc);
  put32(h, zip64 ? kMax32 : sat32(c.size));
  put32(h, zip64 ? kMax32 : sat32(c.size));
  put16(h, static_cast<uint16_t>(name.size()));
  put16(h, static_cast<uint16_t>((zip64 ? 20 : 0) + pad));
  h.insert(h.end(), name.begin(), name.end());
  if (zip64) {
    put16(h, 0x0001);
    put16(h, 16);
    put64(h, c.size);
    put64(h, c.size);
  }
  if (pad) {
    h.push_back('F');
    h.push_back('B');
    put16(h, static_cast<uint16_t>(pad - 4));
    h.insert(h.end(), pad - 4, 'Z');
  }
  CS_RETURN_IF_ERROR(write(h.data(), h.size()));
  CS_RETURN_IF_ERROR(write(data.data(), data.size()));
  central_.push_back(std::move(c));
  return {};
}

Status ZipWriter::finish() {
  if (finished_) return make_error(ErrorCode::kFailedPrecondition, "zip writer already finished");
  const uint64_t cd_offset = offset_;
  std::vector<uint8_t> cd;
  for (const auto& c : central_) {
    const bool big_size = c.zip64 || c.size >= kMax32;
    const bool big_off = c.zip64 || c.offset >= kMax32;
    const uint16_t x_len = static_cast<uint16_t>((big_size ? 16 : 0) + (big_off ? 8 : 0));
    put32(cd, 0x02014b50);
    put16(cd, 0x031e);  // made by: Unix, spec 3.0
    put16(cd, (big_size || big_off) ? 45 : 20);
    put16(cd, 0);
    put16(cd, 0);
    put16(cd, kDosTime);
    put16(cd, kDosDate);
    put32(cd, c.crc);
    put32(cd, big_size ? kMax32 : sat32(c.size));
    put32(cd, big_size ? kMax32 : sat32(c.size));
    put16(cd, static_cast<uint16_t>(c.name.size()));
    put16(cd, x_len ? static_cast<uint16_t>(4 + x_len) : 0);
    put16(cd, 0);               // comment
    put16(cd, 0);               // disk
    put16(cd, 0);               // internal attributes
    put32(cd, 0100644u << 16);  // external: regular file, rw-r--r--
    put32(cd, big_off ? kMax32 : sat32(c.offset));
    cd.insert(cd.end(), c.name.begin(), c.name.end());
    if (x_len) {
      put16(cd, 0x0001);
      put16(cd, x_len);
      if (big_size) {
        put64(cd, c.size);
        put64(cd, c.size);
      }
      if (big_off) put64(cd, c.offset);
    }
  }
  const uint64_t cd_size = cd.size();
  const uint64_t end64_offset = cd_offset + cd_size;
  const uint64_t n = central_.size();
  // ZIP64 end record + locator.
  put32(cd, 0x06064b50);
  put64(cd, 44);
  put16(cd, 0x031e);
  put16(cd, 45);
  put32(cd, 0);
  put32(cd, 0);
  put64(cd, n);
  put64(cd, n);
  put64(cd, cd_size);
  put64(cd, cd_offset);
  put32(cd, 0x07064b50);
  put32(cd, 0);
  put64(cd, end64_offset);
  put32(cd, 1);
  // Classic end record.
  put32(cd, 0x06054b50);
  put16(cd, 0);
  put16(cd, 0);
  put16(cd, n >= 0xffff ? 0xffff : static_cast<uint16_t>(n));
  put16(cd, n >= 0xffff ? 0xffff : static_cast<uint16_t>(n));
  put32(cd, sat32(cd_size));
  put32(cd, sat32(cd_offset));
  put16(cd, 0);
  CS_RETURN_IF_ERROR(write(cd.data(), cd.size()));
  finished_ = true;
  if (!file_) return {};
  return file_->commit();
}

}  // namespace cartserve
