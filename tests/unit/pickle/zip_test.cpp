// Zip reader/writer: round trips, torch-written archives, deflate, ZIP64
// extra fields, and malformed archives (every offset/size forged).
#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "core/mapped_file.h"
#include "formats/zip_reader.h"
#include "formats/zip_writer.h"
#include "test_util.h"

namespace cartserve {
namespace {

using cartserve::testing::fixture_path;

std::span<const uint8_t> as_bytes(const std::string& s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

uint32_t rd32(const std::vector<uint8_t>& b, size_t off) {
  return b[off] | (b[off + 1] << 8) | (b[off + 2] << 16) |
         (static_cast<uint32_t>(b[off + 3]) << 24);
}
void wr32(std::vector<uint8_t>& b, size_t off, uint32_t v) {
  for (int i = 0; i < 4; ++i)
    b[off + i] = static_cast<uint8_t>(v >> (8 * i));
}
void wr64(std::vector<uint8_t>& b, size_t off, uint64_t v) {
  for (int i = 0; i < 8; ++i)
    b[off + i] = static_cast<uint8_t>(v >> (8 * i));
}
// Offsets of every occurrence of a 4-byte signature.
std::vector<size_t> find_sig(const std::vector<uint8_t>& b, uint32_t sig) {
  std::vector<size_t> out;
  for (size_t i = 0; i + 4 <= b.size(); ++i) {
    if (rd32(b, i) == sig) out.push_back(i);
  }
  return out;
}

std::vector<uint8_t> sample_archive(bool zip64 = false) {
  ZipWriter w = ZipWriter::to_memory();
  w.set_force_zip64(zip64);
  EXPECT_TRUE(w.add("arch/data.pkl", std::string_view("pickle bytes")).ok());
  EXPECT_TRUE(w.add("arch/empty", std::string_view("")).ok());
  std::string big(1000, '\0');
  for (size_t i = 0; i < big.size(); ++i)
    big[i] = static_cast<char>(i * 7);
  EXPECT_TRUE(w.add("arch/data/0", std::string_view(big)).ok());
  EXPECT_TRUE(w.finish().ok());
  return w.buffer();
}

TEST(ZipWriterReader, RoundTripAlignedZeroCopy) {
  for (bool zip64 : {false, true}) {
    SCOPED_TRACE(zip64);
    const auto bytes = sample_archive(zip64);
    auto r = ZipReader::open_bytes(bytes, "mem");
    ASSERT_TRUE(r.ok()) << r.status().to_string();
    ASSERT_EQ(r->entries().size(), 3u);
    EXPECT_EQ(r->entries()[0].name, "arch/data.pkl");
    for (const auto& e : r->entries()) {
      EXPECT_EQ(e.data_offset % 64, 0u) << e.name;
      EXPECT_EQ(e.method, 0);
      EXPECT_TRUE(r->verify_crc(e).ok());
    }
    const ZipEntry* d = r->find("arch/data/0");
    ASSERT_NE(d, nullptr);
    auto span = r->stored_span(*d);
    ASSERT_TRUE(span.ok());
    ASSERT_EQ(span->size(), 1000u);
    EXPECT_EQ(span->data(), bytes.data() + d->data_offset);  // zero-copy
    for (size_t i = 0; i < 1000; ++i)
      ASSERT_EQ((*span)[i], static_cast<uint8_t>(i * 7));
    auto copy = r->read(*r->find("arch/data.pkl"));
    ASSERT_TRUE(copy.ok());
    EXPECT_EQ(std::string(copy->begin(), copy->end()), "pickle bytes");
    EXPECT_EQ(r->read(*r->find("arch/empty"))->size(), 0u);
    EXPECT_EQ(r->find("missing"), nullptr);
  }
}

TEST(ZipWriterReader, ForcedZip64UsesExtraFields) {
  const auto bytes = sample_archive(true);
  // Central entries carry 0xffffffff sizes and offsets; the values live in the extra field.
  const auto central = find_sig(bytes, 0x02014b50);
  ASSERT_EQ(central.size(), 3u);
  for (size_t c : central) {
    EXPECT_EQ(rd32(bytes, c + 20), 0xffffffffu);
    EXPECT_EQ(rd32(bytes, c + 42), 0xffffffffu);
  }
  EXPECT_TRUE(ZipReader::open_bytes(bytes, "mem").ok());
  // A ZIP64 extra field that is too short is corrupt.
  auto bad = bytes;
  const size_t c = central[2];
  const uint16_t name_len = bad[c + 28];
  bad[c + 46 + name_len + 2] = 8;  // extra data size 24 -> 8 (offset value missing)
  auto r = ZipReader::open_bytes(bad, "mem");
  EXPECT_EQ(r.status().code(), ErrorCode::kCorrupt) << r.status().to_string();
}

TEST(ZipWriterReader, FileWriterIsAtomicAndDeterministic) {
  cartserve::testing::TempDir dir;
  const std::string path = dir.file("x.zip");
  for (int round = 0; round < 2; ++round) {
    auto w = ZipWriter::create(path);
    ASSERT_TRUE(w.ok());
    ASSERT_TRUE(w->add("a/b", std::string_view("hello")).ok());
    EXPECT_FALSE(std::filesystem::exists(path) && round == 0);  // nothing before finish
    ASSERT_TRUE(w->finish().ok());
  }
  auto on_disk = read_file(path);
  ASSERT_TRUE(on_disk.ok());
  ZipWriter m = ZipWriter::to_memory();
  ASSERT_TRUE(m.add("a/b", std::string_view("hello")).ok());
  ASSERT_TRUE(m.finish().ok());
  EXPECT_EQ(std::vector<uint8_t>(on_disk->begin(), on_disk->end()), m.buffer());
  // An abandoned writer leaves no file behind.
  {
    auto w = ZipWriter::create(dir.file("gone.zip"));
    ASSERT_TRUE(w.ok());
    ASSERT_TRUE(w->add("x", std::string_view("y")).ok());
  }
  EXPECT_FALSE(std::filesystem::exists(dir.file("gone.zip")));
  for (const auto& e : std::filesystem::directory_iterator(dir.path())) {
    EXPECT_EQ(e.path().filename().string().find(".tmp."), std::string::npos) << e.path();
  }
  // Duplicate and empty names are refused.
  ZipWriter d = ZipWriter::to_memory();
  ASSERT_TRUE(d.add("n", std::string_view("1")).ok());
  EXPECT_EQ(d.add("n", std::string_view("2")).code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(d.add("", std::string_view("2")).code(), ErrorCode::kInvalidArgument);
}

TEST(ZipReaderTorch, ReadsTorchSaveArchives) {
  auto r = ZipReader::open(fixture_path("cartridge_formats/params_bf16.pt"));
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  // torch writes data descriptors (flag bit 3) and a ZIP64 end record; sizes come from
  // the central directory.
  std::vector<std::string> names;
  for (const auto& e : r->entries()) {
    names.push_back(e.name);
    EXPECT_EQ(e.method, 0);
    EXPECT_EQ(e.flags & 0x8, 0x8) << e.name;
    EXPECT_TRUE(r->verify_crc(e).ok()) << e.name;
    if (e.name.find("/data/") != std::string::npos) {
      EXPECT_EQ(e.data_offset % 64, 0u);
    }
  }
  EXPECT_NE(std::find(names.begin(), names.end(), "params_bf16/data.pkl"), names.end());
  EXPECT_NE(std::find(names.begin(), names.end(), "params_bf16/byteorder"), names.end());
  EXPECT_NE(std::find(names.begin(), names.end(), "params_bf16/version"), names.end());
}

TEST(ZipReaderTorch, InflatesDeflateEntries) {
  auto r = ZipReader::open(fixture_path("cartridge_formats/deflated_params_bf16.pt"));
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  auto plain = ZipReader::open(fixture_path("cartridge_formats/params_bf16.pt"));
  ASSERT_TRUE(plain.ok());
  int deflated = 0;
  for (const auto& e : r->entries()) {
    if (e.method != 8) continue;
    ++deflated;
    EXPECT_EQ(r->stored_span(e).status().code(), ErrorCode::kUnsupported);
    auto data = r->read(e);
    ASSERT_TRUE(data.ok()) << data.status().to_string();
    std::string plain_name = e.name;
    plain_name.replace(0, std::string("deflated_params_bf16").size(), "params_bf16");
    auto want = plain->read(*plain->find(plain_name));
    ASSERT_TRUE(want.ok()) << plain_name;
    EXPECT_EQ(*data, *want) << e.name;
    // Forged sizes / CRC of a deflate entry are caught.
    ZipEntry forged = e;
    forged.crc32 ^= 1;
    EXPECT_EQ(r->read(forged).status().code(), ErrorCode::kCorrupt);
    forged = e;
    forged.uncompressed_size += 1;
    EXPECT_EQ(r->read(forged).status().code(), ErrorCode::kCorrupt);
    forged = e;
    forged.uncompressed_size = forged.compressed_size * 5000 + 5000;
    EXPECT_EQ(r->read(forged).status().code(), ErrorCode::kCorrupt);
    if (e.uncompressed_size > 1) {
      forged = e;
      forged.uncompressed_size -= 1;
      EXPECT_EQ(r->read(forged).status().code(), ErrorCode::kCorrupt);
    }
  }
  EXPECT_GE(deflated, 5);
  ZipLimits small;
  small.max_read_bytes = 10;
  auto limited = ZipReader::open(fixture_path("cartridge_formats/deflated_params_bf16.pt"), small);
  ASSERT_TRUE(limited.ok());
  const ZipEntry* pkl = limited->find("deflated_params_bf16/data.pkl");
  ASSERT_NE(pkl, nullptr);
  EXPECT_EQ(limited->read(*pkl).status().code(), ErrorCode::kResourceExhausted);
}

// --- malformed archives -------------------------------------------------------

struct Layout {
  std::vector<size_t> local, central;
  size_t end64 = 0, locator = 0, end = 0;
};
Layout layout_of(const std::vector<uint8_t>& b) {
  Layout l;
  l.local = find_sig(b, 0x04034b50);
  l.central = find_sig(b, 0x02014b50);
  l.end64 = find_sig(b, 0x06064b50).at(0);
  l.locator = find_sig(b, 0x07064b50).at(0);
  l.end = find_sig(b, 0x06054b50).at(0);
  return l;
}

void expect_code(const std::vector<uint8_t>& b, ErrorCode code, const char* what,
                 const char* needle = nullptr) {
  auto r = ZipReader::open_bytes(b, "forged.zip");
  ASSERT_FALSE(r.ok()) << what;
  EXPECT_EQ(r.status().code(), code) << what << ": " << r.status().to_string();
  if (needle) {
    EXPECT_NE(r.status().message().find(needle), std::string::npos) << r.status().message();
  }
  EXPECT_NE(r.status().message().find("forged.zip"), std::string::npos);
}

TEST(ZipReaderFaults, EveryTruncationFails) {
  const auto bytes = sample_archive();
  for (size_t n = 0; n < bytes.size(); ++n) {
    std::vector<uint8_t> cut(bytes.begin(), bytes.begin() + static_cast<ptrdiff_t>(n));
    auto r = ZipReader::open_bytes(cut, "cut");
    EXPECT_FALSE(r.ok()) << n;
  }
}

TEST(ZipReaderFaults, EmptyAndRandom) {
  expect_code({}, ErrorCode::kCorrupt, "empty", "too short");
  std::mt19937 rng(7);
  for (int i = 0; i < 200; ++i) {
    std::vector<uint8_t> b(rng() % 4096);
    for (auto& x : b)
      x = static_cast<uint8_t>(rng());
    EXPECT_FALSE(ZipReader::open_bytes(b, "random").ok());
  }
}

TEST(ZipReaderFaults, ForgedOffsetsAndSizes) {
  const auto good = sample_archive();
  ASSERT_TRUE(ZipReader::open_bytes(good, "good").ok());
  const Layout l = layout_of(good);
  ASSERT_EQ(l.central.size(), 3u);

  auto b = good;
  wr64(b, l.end64 + 48, 1ull << 40);  // central directory offset
  expect_code(b, ErrorCode::kCorrupt, "cd offset", "outside the file");
  b = good;
  wr64(b, l.end64 + 40, 1ull << 62);  // central directory size
  expect_code(b, ErrorCode::kCorrupt, "cd size", "outside the file");
  b = good;
  wr64(b, l.locator + 8, UINT64_MAX - 3);  // ZIP64 end record offset
  expect_code(b, ErrorCode::kCorrupt, "zip64 end offset", "ZIP64 end record offset");
  b = good;
  wr64(b, l.end64 + 24, 1000000);  // entry count (this disk and total)
  wr64(b, l.end64 + 32, 1000000);
  expect_code(b, ErrorCode::kCorrupt, "entry count", "entries cannot fit");
  b = good;
  wr32(b, l.central[2] + 42, 0x7fffffff);  // local header offset
  expect_code(b, ErrorCode::kCorrupt, "local offset", "no local header");
  b = good;
  wr32(b, l.central[2] + 20, 0x7ffffff0);  // compressed size
  wr32(b, l.central[2] + 24, 0x7ffffff0);
  expect_code(b, ErrorCode::kCorrupt, "entry size", "outside the entry region");
  b = good;
  wr32(b, l.central[0] + 20, 1000);  // first entry claims to cover the next ones
  wr32(b, l.central[0] + 24, 1000);
  expect_code(b, ErrorCode::kCorrupt, "overlap", "overlap");
  b = good;
  wr32(b, l.central[1] + 20, 5);  // stored with different sizes
  expect_code(b, ErrorCode::kCorrupt, "stored sizes", "compressed size");
  b = good;
  b[l.local[1] + 30] ^= 0x20;  // local name differs from the central one
  expect_code(b, ErrorCode::kCorrupt, "name", "local header name");
  b = good;
  b[l.central[1] + 28] = 0xff;  // name length past the directory
  expect_code(b, ErrorCode::kCorrupt, "name length");
  b = good;
  b[l.central[1] + 8] |= 1;  // encrypted
  expect_code(b, ErrorCode::kUnsupported, "encrypted", "encrypted");
  b = good;
  b[l.central[1] + 10] = 12;  // bzip2
  b[l.local[1] + 8] = 12;
  expect_code(b, ErrorCode::kUnsupported, "method", "compression method 12");
  b = good;
  wr32(b, l.end64 + 16, 1);  // disk number
  expect_code(b, ErrorCode::kUnsupported, "multi-disk", "multi-disk");
  b = good;
  wr32(b, l.end64, 0x12345678);  // ZIP64 end signature
  expect_code(b, ErrorCode::kCorrupt, "zip64 sig", "ZIP64 end record signature");
  b = good;
  wr32(b, l.central[1], 0);  // central signature
  expect_code(b, ErrorCode::kCorrupt, "central sig", "malformed");
  // Duplicate names: rename the third entry to the second one's name (same length).
  std::vector<uint8_t> dup;
  {
    ZipWriter w = ZipWriter::to_memory();
    ASSERT_TRUE(w.add("aa", std::string_view("1")).ok());
    ASSERT_TRUE(w.add("bb", std::string_view("2")).ok());
    ASSERT_TRUE(w.finish().ok());
    dup = w.buffer();
    const Layout dl = layout_of(dup);
    dup[dl.local[1] + 30] = 'a';
    dup[dl.local[1] + 31] = 'a';
    dup[dl.central[1] + 46] = 'a';
    dup[dl.central[1] + 47] = 'a';
  }
  expect_code(dup, ErrorCode::kCorrupt, "duplicate", "duplicate entry name 'aa'");
  // Classic end record without ZIP64 but with saturated values.
  b = good;
  wr32(b, l.locator, 0);  // hide the locator
  wr32(b, l.end + 16, 0xffffffffu);
  expect_code(b, ErrorCode::kCorrupt, "saturated", "ZIP64");
}

TEST(ZipReaderFaults, NonZipFileAndMissingFile) {
  EXPECT_EQ(ZipReader::open("/nonexistent/x.zip").status().code(), ErrorCode::kNotFound);
  const std::string text(200, 'x');
  EXPECT_EQ(ZipReader::open_bytes(as_bytes(text), "text").status().code(), ErrorCode::kCorrupt);
}

}  // namespace
}  // namespace cartserve
