// Malformed GGUF files: each must give a clear error (code + a message that
// names the offending field or tensor), never a crash or an over-read.
#include <gtest/gtest.h>

#include <cstring>
#include <limits>

#include "formats/gguf.h"
#include "formats_test_util.h"

namespace cartserve {
namespace {

using testing::Bytes;
using testing::gguf_header;
using testing::gguf_tensor_info;

class GgufBadInput : public ::testing::Test {
 protected:
  // Writes `bytes` to a file and opens it.
  Result<GgufFile> open_bytes(const std::string& bytes) {
    const std::string path = dir_.file(fmt::format("f{}.gguf", n_++));
    testing::write_bytes(path, bytes);
    return GgufFile::open(path);
  }
  // Expects open to fail with `code` and a message containing every needle.
  void expect_error(const std::string& bytes, ErrorCode code,
                    std::initializer_list<const char*> needles) {
    auto r = open_bytes(bytes);
    ASSERT_FALSE(r.ok()) << "parsed a bad file";
    EXPECT_EQ(r.status().code(), code) << r.status().to_string();
    for (const char* n : needles) {
      EXPECT_NE(r.status().message().find(n), std::string::npos)
          << "'" << n << "' not in: " << r.status().message();
    }
  }
  testing::TempDir dir_;
  int n_ = 0;
};

TEST_F(GgufBadInput, EmptyFile) {
  expect_error("", ErrorCode::kCorrupt, {"empty"});
}

TEST_F(GgufBadInput, MissingFileIsNotFound) {
  auto r = GgufFile::open(dir_.file("absent.gguf"));
  EXPECT_EQ(r.status().code(), ErrorCode::kNotFound);
  EXPECT_NE(r.status().message().find("absent.gguf"), std::string::npos);
}

TEST_F(GgufBadInput, WrongMagic) {
  std::string b = testing::tiny_gguf();
  b[3] = 'X';
  expect_error(b, ErrorCode::kCorrupt, {"magic", "GGUF"});
  // A safetensors file handed to the GGUF reader.
  expect_error(testing::slurp(testing::fixture_path("formats/st_types.safetensors")),
               ErrorCode::kCorrupt, {"not a GGUF file"});
  expect_error("GG", ErrorCode::kCorrupt, {"too small"});
}

TEST_F(GgufBadInput, UnsupportedVersions) {
  expect_error(gguf_header(0, 0, 1).str(), ErrorCode::kUnsupported, {"version 1"});
  expect_error(gguf_header(0, 0, 4).str(), ErrorCode::kUnsupported, {"version 4"});
  expect_error(gguf_header(0, 0, 0x03000000).str(), ErrorCode::kUnsupported, {"big-endian"});
}

// Truncating the gguf-py fixture at every length: every cut before the end of
// the last tensor's data fails with kCorrupt; the message names the section.
TEST_F(GgufBadInput, TruncatedAtEverySection) {
  const std::string full = testing::slurp(testing::fixture_path("formats/types.gguf"));
  const auto ref = testing::load_json(testing::fixture_path("formats/types.gguf.json"));
  const auto& sec = ref["sections"];
  const size_t data_end = sec["data"][1].get<size_t>();
  ASSERT_EQ(full.size(), ref["file_size"].get<size_t>());
  struct Where {
    const char* section;
    const char* needle;
  };
  auto expected_for = [&](size_t len) -> Where {
    if (len == 0) return {"header", "empty"};
    if (len < 4) return {"header", "too small"};
    if (len < sec["header"][1].get<size_t>()) return {"header", "truncated"};
    if (len < sec["kv"][1].get<size_t>()) return {"kv", "metadata key"};
    if (len < sec["tensor_infos"][1].get<size_t>()) return {"tensor infos", "tensor"};
    return {"data", "beyond the end"};
  };
  for (size_t len = 0; len < full.size(); ++len) {
    const std::string path = dir_.file("trunc.gguf");
    testing::write_bytes(path, full.substr(0, len));
    auto r = GgufFile::open(path);
    if (len >= data_end) {  // only the final padding is missing: still valid
      EXPECT_TRUE(r.ok()) << len << ": " << r.status().to_string();
      continue;
    }
    ASSERT_FALSE(r.ok()) << "truncated at " << len << " parsed";
    ASSERT_EQ(r.status().code(), ErrorCode::kCorrupt) << len << ": " << r.status().to_string();
    const Where w = expected_for(len);
    EXPECT_NE(r.status().message().find(w.needle), std::string::npos)
        << "cut at " << len << " (in " << w.section << "): " << r.status().message();
  }
}

TEST_F(GgufBadInput, AbsurdCounts) {
  expect_error(gguf_header(0, uint64_t{1} << 60).str(), ErrorCode::kCorrupt, {"key/value count"});
  expect_error(gguf_header(uint64_t{1} << 60, 0).str(), ErrorCode::kCorrupt, {"tensor count"});
  expect_error(gguf_header(uint64_t{1} << 60, 0).zeros(1000).str(), ErrorCode::kCorrupt,
               {"tensor count"});
  expect_error(gguf_header(~uint64_t{0}, ~uint64_t{0}).str(), ErrorCode::kCorrupt, {"count"});
  // Array length far beyond the file.
  Bytes b = gguf_header(0, 1);
  b.str("big.array").u32(testing::kGArray).u32(testing::kGU32).u64(uint64_t{1} << 62);
  b.zeros(64);
  expect_error(b.str(), ErrorCode::kCorrupt, {"big.array", "array"});
  // Array of strings whose count fits bytes-wise only as u8.
  Bytes s = gguf_header(0, 1);
  s.str("strs").u32(testing::kGArray).u32(testing::kGString).u64(100).zeros(100);
  expect_error(s.str(), ErrorCode::kCorrupt, {"strs"});
}

TEST_F(GgufBadInput, StringLengthBeyondTheEnd) {
  Bytes key = gguf_header(0, 1);
  key.u64(uint64_t{1} << 40).raw("general.architecture");
  expect_error(key.str(), ErrorCode::kCorrupt, {"metadata key #0", "length"});
  Bytes val = gguf_header(0, 1);
  val.str("general.name").u32(testing::kGString).u64(1000).raw("short");
  expect_error(val.str(), ErrorCode::kCorrupt, {"general.name", "length 1000"});
  Bytes name = gguf_header(1, 0);
  name.u64(~uint64_t{0} - 3).raw("w").zeros(64);
  expect_error(name.str(), ErrorCode::kCorrupt, {"tensor info #0"});
}

TEST_F(GgufBadInput, BadMetadataValues) {
  Bytes type = gguf_header(0, 1);
  type.str("k").u32(13).u32(0);
  expect_error(type.str(), ErrorCode::kCorrupt, {"'k'", "value type 13"});
  Bytes boolean = gguf_header(0, 1);
  boolean.str("flag").u32(testing::kGBool).u8(7);
  expect_error(boolean.str(), ErrorCode::kCorrupt, {"flag", "bool"});
  Bytes dup = gguf_header(0, 2);
  dup.str("a").u32(testing::kGU8).u8(1).str("a").u32(testing::kGU8).u8(2);
  expect_error(dup.str(), ErrorCode::kCorrupt, {"'a'", "duplicate"});
  Bytes elem = gguf_header(0, 1);
  elem.str("arr").u32(testing::kGArray).u32(99).u64(1).u32(0);
  expect_error(elem.str(), ErrorCode::kCorrupt, {"arr", "element type 99"});
  // Arrays nested 9 deep.
  Bytes deep = gguf_header(0, 1);
  deep.str("deep").u32(testing::kGArray);
  for (int i = 0; i < 9; ++i)
    deep.u32(testing::kGArray).u64(1);
  deep.u32(testing::kGU8).u64(1).u8(0);
  expect_error(deep.str(), ErrorCode::kCorrupt, {"deep", "nested"});
}

TEST_F(GgufBadInput, BadAlignment) {
  for (uint32_t a : {0u, 3u, 48u}) {
    Bytes b = gguf_header(0, 1);
    b.str("general.alignment").u32(testing::kGU32).u32(a);
    expect_error(b.str(), ErrorCode::kCorrupt, {"general.alignment"});
  }
  Bytes s = gguf_header(0, 1);
  s.str("general.alignment").u32(testing::kGString).str("32");
  expect_error(s.str(), ErrorCode::kCorrupt, {"general.alignment", "string"});
}

// One F32 tensor with the given dims/type/offset, followed by `data` bytes.
std::string one_tensor(std::initializer_list<uint64_t> ne, uint32_t type, uint64_t offset,
                       size_t data_bytes, uint32_t n_dims_override = 0) {
  Bytes b = gguf_header(1, 0);
  if (n_dims_override) {
    b.str("blk.0.w").u32(n_dims_override);
    for (uint32_t i = 0; i < n_dims_override; ++i)
      b.u64(2);
    b.u32(type).u64(offset);
  } else {
    gguf_tensor_info(b, "blk.0.w", ne, type, offset);
  }
  b.pad_to(32).zeros(data_bytes);
  return b.str();
}

TEST_F(GgufBadInput, BadDimensions) {
  expect_error(one_tensor({}, 0, 0, 64, 5), ErrorCode::kCorrupt, {"blk.0.w", "n_dims is 5"});
  expect_error(one_tensor({4, 0}, 0, 0, 64), ErrorCode::kCorrupt, {"blk.0.w", "ne[1] = 0"});
  expect_error(one_tensor({~uint64_t{0}}, 0, 0, 64), ErrorCode::kCorrupt,
               {"blk.0.w", "ne[0] = -1"});
  expect_error(one_tensor({uint64_t{1} << 32, uint64_t{1} << 32}, 0, 0, 64), ErrorCode::kCorrupt,
               {"blk.0.w", "overflow"});
  // ne[0] not a multiple of the Q4_0 block (32).
  expect_error(one_tensor({16, 2}, 2, 0, 64), ErrorCode::kCorrupt, {"blk.0.w", "Q4_0", "32"});
}

TEST_F(GgufBadInput, TensorDataBeyondTheFile) {
  // 4 x f32 = 16 bytes needed, 8 present.
  expect_error(one_tensor({4}, 0, 0, 8), ErrorCode::kCorrupt, {"blk.0.w", "beyond the end"});
  // Offset itself beyond the file.
  expect_error(one_tensor({4}, 0, 1 << 20, 64), ErrorCode::kCorrupt, {"blk.0.w", "beyond"});
  // Offset near 2^64: offset + size must not wrap.
  expect_error(one_tensor({4}, 0, ~uint64_t{0} - 31, 64), ErrorCode::kCorrupt, {"blk.0.w"});
  // Huge tensor (size overflows a naive product).
  expect_error(one_tensor({uint64_t{1} << 61, 2}, 0, 0, 64), ErrorCode::kCorrupt, {"blk.0.w"});
}

TEST_F(GgufBadInput, MisalignedOffset) {
  expect_error(one_tensor({4}, 0, 16, 64), ErrorCode::kCorrupt,
               {"blk.0.w", "offset 16", "alignment 32"});
}

TEST_F(GgufBadInput, OverlappingTensors) {
  Bytes b = gguf_header(2, 0);
  gguf_tensor_info(b, "a", {16}, 0, 0);   // [0, 64)
  gguf_tensor_info(b, "b", {16}, 0, 32);  // [32, 96)
  b.pad_to(32).zeros(128);
  expect_error(b.str(), ErrorCode::kCorrupt, {"'a'", "'b'", "overlap"});
}

TEST_F(GgufBadInput, DuplicateTensorName) {
  Bytes b = gguf_header(2, 0);
  gguf_tensor_info(b, "a", {8}, 0, 0);
  gguf_tensor_info(b, "a", {8}, 0, 32);
  b.pad_to(32).zeros(64);
  expect_error(b.str(), ErrorCode::kCorrupt, {"'a'", "duplicate"});
}

// A type ggml does not define: the file opens, loading that tensor fails.
TEST_F(GgufBadInput, UnknownTensorTypeOpensButLoadFails) {
  auto r = open_bytes(one_tensor({4}, 99, 0, 64));
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  auto t = r->load_f32("blk.0.w");
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), ErrorCode::kUnsupported);
  EXPECT_NE(t.status().message().find("type99"), std::string::npos);
  EXPECT_NE(t.status().message().find("blk.0.w"), std::string::npos);
  // Known-but-unsupported types are sized: Q5_K needs 176 bytes per 256.
  auto q = open_bytes(one_tensor({256}, 13, 0, 176));
  ASSERT_TRUE(q.ok()) << q.status().to_string();
  EXPECT_EQ(q->load_f32("blk.0.w").status().code(), ErrorCode::kUnsupported);
  expect_error(one_tensor({256}, 13, 0, 100), ErrorCode::kCorrupt, {"blk.0.w", "Q5_K"});
}

TEST_F(GgufBadInput, ForeignTensorInfoIsRejected) {
  auto r = open_bytes(testing::tiny_gguf(8));
  ASSERT_TRUE(r.ok());
  GgufTensorInfo fake = *r->find_tensor("w");
  fake.offset = 1 << 20;
  EXPECT_TRUE(r->tensor_bytes(fake).empty());
  EXPECT_FALSE(r->load_f32(fake).ok());
}

TEST_F(GgufBadInput, NoTensorsIsValid) {
  Bytes b = gguf_header(0, 1);
  b.str("general.architecture").u32(testing::kGString).str("llama");
  auto r = open_bytes(b.str());
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_TRUE(r->tensors().empty());
}

}  // namespace
}  // namespace cartserve
