// safetensors reader against files written by the Python `safetensors`
// package (tools/make_formats_fixtures.py), sharded folders, the writer, and
// malformed headers.
#include "formats/safetensors.h"

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>

#include "formats_test_util.h"

namespace cartserve {
namespace {

using nlohmann::json;
using testing::fixture_path;
using testing::load_json;

// Element i of a view as double (floats) or int64 (integers, bool).
double as_double(const TensorView& v, int64_t i) {
  switch (v.dtype) {
    case DType::kF32:
      return v.as<float>()[i];
    case DType::kF16:
      return fp16_to_f32(v.as<uint16_t>()[i]);
    case DType::kBF16:
      return bf16_to_f32(v.as<uint16_t>()[i]);
    case DType::kF64:
      return v.as<double>()[i];
    default:
      return 0;
  }
}
int64_t as_int(const TensorView& v, int64_t i) {
  switch (v.dtype) {
    case DType::kI8:
      return v.as<int8_t>()[i];
    case DType::kU8:
      return v.as<uint8_t>()[i];
    case DType::kBool:
      return v.as<uint8_t>()[i];
    case DType::kI16:
      return v.as<int16_t>()[i];
    case DType::kI32:
      return v.as<int32_t>()[i];
    case DType::kI64:
      return v.as<int64_t>()[i];
    default:
      return 0;
  }
}

// Compares a view with {"dtype": torch name, "shape": [...], "values": [...]}.
void expect_view_equals(const TensorView& v, const json& want, const std::string& name) {
  EXPECT_EQ(v.dtype, *parse_dtype(want["dtype"].get<std::string>())) << name;
  EXPECT_EQ(v.shape, want["shape"].get<Shape>()) << name;
  const json& vals = want["values"];
  ASSERT_EQ(static_cast<size_t>(v.numel()), vals.size()) << name;
  const bool is_float = v.dtype == DType::kF32 || v.dtype == DType::kF16 ||
                        v.dtype == DType::kBF16 || v.dtype == DType::kF64;
  for (size_t i = 0; i < vals.size(); ++i) {
    if (is_float) {
      EXPECT_EQ(as_double(v, static_cast<int64_t>(i)), vals[i].get<double>())
          << name << "[" << i << "]";
    } else {
      EXPECT_EQ(as_int(v, static_cast<int64_t>(i)), vals[i].get<int64_t>())
          << name << "[" << i << "]";
    }
  }
}

TEST(Safetensors, ReadsEveryDtypeWrittenByPython) {
  const json ref = load_json(fixture_path("formats/st_types.safetensors.json"));
  auto f = SafetensorsFile::open(fixture_path("formats/st_types.safetensors"));
  ASSERT_TRUE(f.ok()) << f.status().to_string();
  EXPECT_EQ(f->entries().size(), ref["tensors"].size());
  for (const auto& [name, want] : ref["tensors"].items()) {
    const SafetensorsEntry* e = f->find(name);
    ASSERT_NE(e, nullptr) << name;
    expect_view_equals(f->view(*e), want, name);
  }
  EXPECT_EQ(f->metadata(), (ref["metadata"].get<std::map<std::string, std::string>>()));
  EXPECT_EQ(f->find("nope"), nullptr);
  // Zero-copy: views point into the mapping, aligned to their element size
  // (Python's writer orders tensors by alignment).
  for (const SafetensorsEntry& e : f->entries()) {
    const TensorView v = f->view(e);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(v.data) % dtype_size(v.dtype), 0u) << e.name;
  }
}

TEST(Safetensors, ShardedFolder) {
  const json ref = load_json(fixture_path("formats/st_sharded.json"));
  auto set = SafetensorsSet::open_dir(fixture_path("formats/st_sharded"));
  ASSERT_TRUE(set.ok()) << set.status().to_string();
  EXPECT_EQ(set->names().size(), ref.size());
  for (const auto& [name, want] : ref.items()) {
    EXPECT_TRUE(set->contains(name));
    auto v = set->get(name);
    ASSERT_TRUE(v.ok()) << v.status().to_string();
    expect_view_equals(*v, want, name);
  }
  auto missing = set->get("lm_head.weight");
  EXPECT_EQ(missing.status().code(), ErrorCode::kNotFound);
  EXPECT_NE(missing.status().message().find("lm_head.weight"), std::string::npos);
}

TEST(Safetensors, SingleFileFolder) {
  auto set = SafetensorsSet::open_dir(fixture_path("formats/st_single"));
  ASSERT_TRUE(set.ok()) << set.status().to_string();
  EXPECT_EQ(set->names(), std::vector<std::string>{"w"});
  auto v = set->get("w");
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(v->shape, (Shape{2, 3}));
  for (int i = 0; i < 6; ++i)
    EXPECT_EQ(v->as<float>()[i], static_cast<float>(i));
}

TEST(Safetensors, FolderErrors) {
  testing::TempDir dir;
  auto none = SafetensorsSet::open_dir(dir.path());
  EXPECT_EQ(none.status().code(), ErrorCode::kNotFound);
  EXPECT_NE(none.status().message().find("model.safetensors"), std::string::npos);
  EXPECT_EQ(SafetensorsSet::open_dir(dir.file("absent")).status().code(), ErrorCode::kNotFound);

  // Index naming a shard that is not there.
  namespace fs = std::filesystem;
  const std::string src = fixture_path("formats/st_sharded");
  fs::copy_file(src + "/model.safetensors.index.json", dir.file("model.safetensors.index.json"));
  fs::copy_file(src + "/model-00001-of-00002.safetensors",
                dir.file("model-00001-of-00002.safetensors"));
  auto missing = SafetensorsSet::open_dir(dir.path());
  EXPECT_EQ(missing.status().code(), ErrorCode::kNotFound);
  EXPECT_NE(missing.status().message().find("model-00002-of-00002.safetensors"), std::string::npos)
      << missing.status().message();

  // Index that puts a tensor in the wrong shard.
  testing::write_bytes(
      dir.file("model.safetensors.index.json"),
      R"({"weight_map": {"model.norm.weight": "model-00001-of-00002.safetensors"}})");
  auto wrong = SafetensorsSet::open_dir(dir.path());
  EXPECT_EQ(wrong.status().code(), ErrorCode::kCorrupt);
  EXPECT_NE(wrong.status().message().find("model.norm.weight"), std::string::npos);

  // Shard names must be plain file names.
  testing::write_bytes(dir.file("model.safetensors.index.json"),
                       R"({"weight_map": {"x": "../etc/passwd"}})");
  EXPECT_EQ(SafetensorsSet::open_dir(dir.path()).status().code(), ErrorCode::kCorrupt);
  testing::write_bytes(dir.file("model.safetensors.index.json"), R"({"weight_map": [1, 2]})");
  EXPECT_EQ(SafetensorsSet::open_dir(dir.path()).status().code(), ErrorCode::kCorrupt);
  testing::write_bytes(dir.file("model.safetensors.index.json"), "{not json");
  auto bad = SafetensorsSet::open_dir(dir.path());
  EXPECT_EQ(bad.status().code(), ErrorCode::kCorrupt);
  EXPECT_NE(bad.status().message().find("model.safetensors.index.json"), std::string::npos);
}

// ---------------------------------------------------------------- writer

// The content tools/make_formats_fixtures.py expects in
// cartserve_written.safetensors (cartserve_written_expected()).
struct WrittenContent {
  std::vector<float> a{-1.0f, -0.5f, 0.0f, 0.5f, 1.0f, 1.5f};
  std::vector<uint16_t> b{f32_to_bf16(1.0f), f32_to_bf16(-2.0f), f32_to_bf16(0.5f),
                          f32_to_bf16(3.140625f)};
  std::vector<int64_t> c{1, -1, int64_t{1} << 40};
  std::vector<uint8_t> d{0, 1, 2, 3, 4};
  std::vector<uint16_t> e{f32_to_fp16(0.25f), f32_to_fp16(-0.5f), f32_to_fp16(1024.0f),
                          f32_to_fp16(65504.0f)};
  std::vector<std::pair<std::string, TensorView>> tensors() const {
    return {
        {"a", TensorView{DType::kF32, {2, 3}, a.data()}},
        {"b", TensorView{DType::kBF16, {4}, b.data()}},
        {"c", TensorView{DType::kI64, {3}, c.data()}},
        {"d", TensorView{DType::kU8, {5}, d.data()}},
        {"e", TensorView{DType::kF16, {2, 2}, e.data()}},
        {"empty", TensorView{DType::kF32, {0}, nullptr}},
    };
  }
  std::map<std::string, std::string> metadata() const {
    return {{"format", "pt"}, {"source", "cartserve"}};
  }
};

TEST(SafetensorsWriter, RoundTripsThroughReader) {
  testing::TempDir dir;
  const WrittenContent c;
  const auto tensors = c.tensors();
  ASSERT_TRUE(write_safetensors(dir.file("x.safetensors"), tensors, c.metadata()).ok());
  auto f = SafetensorsFile::open(dir.file("x.safetensors"));
  ASSERT_TRUE(f.ok()) << f.status().to_string();
  EXPECT_EQ(f->metadata(), c.metadata());
  ASSERT_EQ(f->entries().size(), tensors.size());
  for (const auto& [name, want] : tensors) {
    const SafetensorsEntry* e = f->find(name);
    ASSERT_NE(e, nullptr) << name;
    const TensorView v = f->view(*e);
    EXPECT_EQ(v.dtype, want.dtype);
    EXPECT_EQ(v.shape, want.shape);
    ASSERT_EQ(v.nbytes(), want.nbytes());
    if (v.nbytes()) {
      EXPECT_EQ(std::memcmp(v.data, want.data, v.nbytes()), 0) << name;
    }
    EXPECT_EQ(reinterpret_cast<uintptr_t>(v.data) % dtype_size(v.dtype), 0u) << name;
  }
  // Header padded with spaces to a multiple of 8; no temporary left behind.
  const std::string bytes = testing::slurp(dir.file("x.safetensors"));
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  EXPECT_EQ(n % 8, 0u);
  EXPECT_EQ(bytes[8], '{');
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir.path()),
                          std::filesystem::directory_iterator{}),
            1);
}

// Our writer's bytes equal the committed fixture, which the fixture script
// loads with Python safetensors (check_cartserve_written). Regenerate with
// CARTSERVE_UPDATE_FIXTURES=1, then run the script to verify it.
TEST(SafetensorsWriter, WriterMatchesCommittedFixture) {
  const std::string fixture = fixture_path("formats/cartserve_written.safetensors");
  const WrittenContent c;
  if (testing::env_or_empty("CARTSERVE_UPDATE_FIXTURES") == "1") {
    ASSERT_TRUE(write_safetensors(fixture, c.tensors(), c.metadata()).ok());
  }
  testing::TempDir dir;
  ASSERT_TRUE(write_safetensors(dir.file("w.safetensors"), c.tensors(), c.metadata()).ok());
  EXPECT_EQ(testing::slurp(dir.file("w.safetensors")), testing::slurp(fixture))
      << "writer output changed: regenerate the fixture (see comment) and verify it in Python";
}

TEST(SafetensorsWriter, RejectsBadInput) {
  testing::TempDir dir;
  const float x[2] = {1, 2};
  const TensorView v{DType::kF32, {2}, x};
  const std::string p = dir.file("bad.safetensors");
  EXPECT_EQ(write_safetensors(p, {{"a", v}, {"a", v}}).code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(write_safetensors(p, {{"", v}}).code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(write_safetensors(p, {{"__metadata__", v}}).code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(write_safetensors(p, {{"a", TensorView{DType::kF32, {2}, nullptr}}}).code(),
            ErrorCode::kInvalidArgument);
  EXPECT_EQ(write_safetensors(p, {{"a", TensorView{DType::kF32, {-1}, x}}}).code(),
            ErrorCode::kInvalidArgument);
  EXPECT_EQ(write_safetensors(p, {{std::string("\xff\xfe"), v}}).code(),
            ErrorCode::kInvalidArgument);
  EXPECT_FALSE(std::filesystem::exists(p));
  EXPECT_EQ(write_safetensors(dir.file("no/such/dir/x.safetensors"), {{"a", v}}).code(),
            ErrorCode::kIo);
  // No tensors at all is a valid file.
  ASSERT_TRUE(write_safetensors(p, {}).ok());
  auto f = SafetensorsFile::open(p);
  ASSERT_TRUE(f.ok()) << f.status().to_string();
  EXPECT_TRUE(f->entries().empty());
}

// ---------------------------------------------------------------- bad input

// u64 header length + header + data.
std::string st_bytes(const std::string& header, size_t data_bytes, uint64_t len_override = 0) {
  testing::Bytes b;
  b.u64(len_override ? len_override : header.size()).raw(header).zeros(data_bytes);
  return b.str();
}

class SafetensorsBadInput : public ::testing::Test {
 protected:
  void expect_error(const std::string& bytes, ErrorCode code,
                    std::initializer_list<const char*> needles) {
    const std::string path = dir_.file(fmt::format("f{}.safetensors", n_++));
    testing::write_bytes(path, bytes);
    auto r = SafetensorsFile::open(path);
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

TEST_F(SafetensorsBadInput, TooSmall) {
  expect_error("", ErrorCode::kCorrupt, {"too small"});
  expect_error("abc", ErrorCode::kCorrupt, {"too small"});
}

TEST_F(SafetensorsBadInput, HeaderLengthBeyondTheFile) {
  expect_error(st_bytes("{}", 0, 1000), ErrorCode::kCorrupt, {"header length 1000", "beyond"});
  expect_error(st_bytes("{}", 0, ~uint64_t{0}), ErrorCode::kCorrupt, {"header length"});
  // A GGUF file handed to the safetensors reader.
  expect_error(testing::tiny_gguf(), ErrorCode::kCorrupt, {"header length"});
}

TEST_F(SafetensorsBadInput, BadJson) {
  expect_error(st_bytes("{\"a\": ", 0), ErrorCode::kCorrupt, {"not valid JSON"});
  expect_error(st_bytes("[1, 2]", 0), ErrorCode::kCorrupt, {"not an object"});
  expect_error(st_bytes("", 0), ErrorCode::kCorrupt, {"JSON"});
  expect_error(st_bytes(R"({"a": 5})", 0), ErrorCode::kCorrupt, {"'a'", "not a JSON object"});
  expect_error(st_bytes(R"({"a": {"dtype": "F32", "shape": [1]}})", 4), ErrorCode::kCorrupt,
               {"'a'", "data_offsets"});
  expect_error(st_bytes(R"({"__metadata__": {"k": 1}})", 0), ErrorCode::kCorrupt,
               {"__metadata__", "'k'"});
}

TEST_F(SafetensorsBadInput, UnknownDtype) {
  expect_error(st_bytes(R"({"w": {"dtype": "F17", "shape": [1], "data_offsets": [0, 4]}})", 4),
               ErrorCode::kCorrupt, {"'w'", "unknown dtype 'F17'"});
  expect_error(st_bytes(R"({"w": {"dtype": "F8_E4M3", "shape": [1], "data_offsets": [0, 1]}})", 1),
               ErrorCode::kUnsupported, {"'w'", "F8_E4M3"});
  expect_error(st_bytes(R"({"w": {"dtype": 3, "shape": [1], "data_offsets": [0, 4]}})", 4),
               ErrorCode::kCorrupt, {"'w'", "dtype"});
}

TEST_F(SafetensorsBadInput, DataOffsetsMismatch) {
  // 2x3 F32 = 24 bytes, offsets span 20.
  expect_error(st_bytes(R"({"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 20]}})", 24),
               ErrorCode::kCorrupt, {"'w'", "span 20 bytes", "needs 24"});
  expect_error(st_bytes(R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}})", 8),
               ErrorCode::kCorrupt, {"'w'", "outside"});
  expect_error(st_bytes(R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0]}})", 8),
               ErrorCode::kCorrupt, {"'w'", "data_offsets"});
  expect_error(st_bytes(R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [-4, 0]}})", 8),
               ErrorCode::kCorrupt, {"'w'", "data_offsets"});
}

TEST_F(SafetensorsBadInput, OffsetsBeyondTheBuffer) {
  expect_error(st_bytes(R"({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})", 8),
               ErrorCode::kCorrupt, {"'w'", "outside the data buffer of 8 bytes"});
  expect_error(
      st_bytes(
          R"({"w": {"dtype": "F32", "shape": [4611686018427387904], "data_offsets": [0, 16]}})",
          16),
      ErrorCode::kCorrupt, {"'w'"});
}

TEST_F(SafetensorsBadInput, BadShapes) {
  expect_error(st_bytes(R"({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}})", 4),
               ErrorCode::kCorrupt, {"'w'", "shape"});
  expect_error(st_bytes(R"({"w": {"dtype": "F32", "shape": [1.5], "data_offsets": [0, 4]}})", 4),
               ErrorCode::kCorrupt, {"'w'", "shape"});
  expect_error(st_bytes(R"({"w": {"dtype": "F32", "shape": 4, "data_offsets": [0, 16]}})", 16),
               ErrorCode::kCorrupt, {"'w'", "shape"});
  expect_error(
      st_bytes(
          R"({"w": {"dtype": "I64", "shape": [4294967296, 4294967296], "data_offsets": [0, 8]}})",
          8),
      ErrorCode::kCorrupt, {"'w'", "overflow"});
}

TEST_F(SafetensorsBadInput, OverlappingTensors) {
  expect_error(st_bytes(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                            "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
                        12),
               ErrorCode::kCorrupt, {"'a'", "'b'", "overlap"});
}

TEST_F(SafetensorsBadInput, TruncatedData) {
  // The Python-written fixture cut anywhere inside its data buffer.
  const std::string full = testing::slurp(fixture_path("formats/st_types.safetensors"));
  uint64_t n = 0;
  std::memcpy(&n, full.data(), 8);
  for (size_t len = 0; len < full.size(); ++len) {
    const std::string path = dir_.file("cut.safetensors");
    testing::write_bytes(path, full.substr(0, len));
    auto r = SafetensorsFile::open(path);
    ASSERT_FALSE(r.ok()) << "cut at " << len << " parsed";
    EXPECT_EQ(r.status().code(), ErrorCode::kCorrupt) << len;
    if (len >= 8 + n) {
      EXPECT_NE(r.status().message().find("outside the data buffer"), std::string::npos)
          << r.status().message();
    }
  }
}

}  // namespace
}  // namespace cartserve
