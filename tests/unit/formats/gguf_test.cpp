// GGUF reader against files and values made by gguf-py
// (tools/make_formats_fixtures.py): metadata of every value type, tensor
// infos, and dequantized values, which must match gguf.quants.dequantize
// exactly (tolerance 0: the same float32 operations in the same order; the
// formats library is built with -ffp-contract=off).
#include "formats/gguf.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <iostream>

#include "formats/gguf_dequant.h"
#include "formats_test_util.h"

namespace cartserve {
namespace {

using nlohmann::json;
using testing::fixture_path;
using testing::load_json;

// Bitwise equality of float arrays, reporting the first mismatch.
void expect_floats_equal(const float* got, const json& want, const std::string& what) {
  size_t mismatches = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    const float w = static_cast<float>(want[i].get<double>());
    if (std::memcmp(&got[i], &w, sizeof(float)) != 0) {
      if (mismatches++ == 0) {
        ADD_FAILURE() << what << ": first mismatch at " << i << ": got " << got[i] << ", want "
                      << w;
      }
    }
  }
  EXPECT_EQ(mismatches, 0u) << what;
}

class GgufTypesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ref_ = load_json(fixture_path("formats/types.gguf.json"));
    auto f = GgufFile::open(fixture_path("formats/types.gguf"));
    ASSERT_TRUE(f.ok()) << f.status().to_string();
    file_ = std::make_unique<GgufFile>(std::move(f).value());
  }
  json ref_;
  std::unique_ptr<GgufFile> file_;
};

TEST_F(GgufTypesTest, HeaderAndLayout) {
  EXPECT_EQ(file_->version(), 3u);
  EXPECT_EQ(file_->alignment(), 64u);
  EXPECT_EQ(file_->data_offset(), ref_["data_offset"].get<uint64_t>());
  EXPECT_EQ(file_->keys().size(), ref_["n_kv"].get<size_t>());
  EXPECT_EQ(file_->keys().front(), "general.architecture");  // file order
}

TEST_F(GgufTypesTest, ScalarMetadataOfEveryType) {
  const json& m = ref_["metadata"];
  for (const char* k : {"test.u8", "test.i8", "test.u16", "test.i16", "test.u32", "test.i32",
                        "test.u64_small", "test.i64"}) {
    auto v = file_->get_int(k);
    ASSERT_TRUE(v.ok()) << k << ": " << v.status().to_string();
    EXPECT_EQ(*v, m[k]["value"].get<int64_t>()) << k;
  }
  EXPECT_EQ(file_->find("test.u8")->type, GgufValue::Type::kU8);
  EXPECT_EQ(file_->find("test.i8")->type, GgufValue::Type::kI8);
  EXPECT_EQ(file_->find("test.u16")->type, GgufValue::Type::kU16);
  EXPECT_EQ(file_->find("test.i16")->type, GgufValue::Type::kI16);
  EXPECT_EQ(file_->find("test.u32")->type, GgufValue::Type::kU32);
  EXPECT_EQ(file_->find("test.i32")->type, GgufValue::Type::kI32);
  EXPECT_EQ(file_->find("test.i64")->type, GgufValue::Type::kI64);
  EXPECT_EQ(file_->find("test.f64")->type, GgufValue::Type::kF64);

  // u64 beyond int64: stored exactly, get_int refuses it.
  const GgufValue* big = file_->find("test.u64");
  ASSERT_NE(big, nullptr);
  EXPECT_EQ(big->type, GgufValue::Type::kU64);
  EXPECT_EQ(std::get<uint64_t>(big->value), m["test.u64"]["value"].get<uint64_t>());
  EXPECT_EQ(file_->get_int("test.u64").status().code(), ErrorCode::kOutOfRange);

  EXPECT_EQ(*file_->get_float("test.f32"), m["test.f32"]["value"].get<double>());
  EXPECT_EQ(*file_->get_float("test.f64"), m["test.f64"]["value"].get<double>());
  EXPECT_EQ(*file_->get_float("test.u32"), 4000000000.0);  // integers convert
  EXPECT_TRUE(*file_->get_bool("test.bool_true"));
  EXPECT_FALSE(*file_->get_bool("test.bool_false"));
  EXPECT_EQ(*file_->get_string("test.string"), m["test.string"]["value"].get<std::string>());
  EXPECT_EQ(*file_->get_string("test.empty_string"), "");
  EXPECT_EQ(*file_->get_string("general.architecture"), "llama");
}

TEST_F(GgufTypesTest, ArrayMetadata) {
  const json& m = ref_["metadata"];
  EXPECT_EQ(*file_->get_string_array("test.arr_str"),
            m["test.arr_str"]["value"].get<std::vector<std::string>>());
  EXPECT_EQ(*file_->get_int_array("test.arr_i32"),
            m["test.arr_i32"]["value"].get<std::vector<int64_t>>());
  EXPECT_EQ(*file_->get_int_array("test.arr_u8"),
            m["test.arr_u8"]["value"].get<std::vector<int64_t>>());
  EXPECT_EQ(*file_->get_float_array("test.arr_f32"),
            m["test.arr_f32"]["value"].get<std::vector<double>>());
  EXPECT_EQ(*file_->get_float_array("test.arr_f64"),
            m["test.arr_f64"]["value"].get<std::vector<double>>());
  EXPECT_EQ(*file_->get_float_array("test.arr_i32"),
            (std::vector<double>{1, -2, 2147483647, -2147483648.0}));

  const GgufValue* b = file_->find("test.arr_bool");
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(b->array_type, GgufValue::Type::kBool);
  const auto& bools = std::get<std::vector<GgufValue>>(b->value);
  ASSERT_EQ(bools.size(), 3u);
  EXPECT_TRUE(std::get<bool>(bools[0].value));
  EXPECT_FALSE(std::get<bool>(bools[1].value));

  // Nested: array of arrays of i32.
  const GgufValue* n = file_->find("test.arr_nested");
  ASSERT_NE(n, nullptr);
  EXPECT_EQ(n->type, GgufValue::Type::kArray);
  EXPECT_EQ(n->array_type, GgufValue::Type::kArray);
  const auto& outer = std::get<std::vector<GgufValue>>(n->value);
  const json& want = m["test.arr_nested"]["value"];
  ASSERT_EQ(outer.size(), want.size());
  for (size_t i = 0; i < outer.size(); ++i) {
    EXPECT_EQ(outer[i].array_type, GgufValue::Type::kI32);
    const auto& inner = std::get<std::vector<GgufValue>>(outer[i].value);
    ASSERT_EQ(inner.size(), want[i].size());
    for (size_t j = 0; j < inner.size(); ++j) {
      EXPECT_EQ(std::get<int64_t>(inner[j].value), want[i][j].get<int64_t>());
    }
  }
}

TEST_F(GgufTypesTest, GetterErrorsNameTheKey) {
  auto missing = file_->get_int("no.such.key");
  EXPECT_EQ(missing.status().code(), ErrorCode::kNotFound);
  EXPECT_NE(missing.status().message().find("no.such.key"), std::string::npos);
  auto wrong = file_->get_int("test.string");
  EXPECT_EQ(wrong.status().code(), ErrorCode::kCorrupt);
  EXPECT_NE(wrong.status().message().find("test.string"), std::string::npos);
  EXPECT_NE(wrong.status().message().find("string"), std::string::npos);
  EXPECT_EQ(file_->get_string_array("test.arr_i32").status().code(), ErrorCode::kCorrupt);
  EXPECT_EQ(file_->get_bool("test.u8").status().code(), ErrorCode::kCorrupt);
  EXPECT_EQ(file_->get_float_array("test.arr_str").status().code(), ErrorCode::kCorrupt);
}

TEST_F(GgufTypesTest, TensorInfosMatchGgufPy) {
  const json& infos = ref_["tensor_infos"];
  ASSERT_EQ(file_->tensors().size(), infos.size());
  for (size_t i = 0; i < infos.size(); ++i) {
    const GgufTensorInfo& t = file_->tensors()[i];
    EXPECT_EQ(t.name, infos[i]["name"].get<std::string>());
    EXPECT_EQ(t.type, infos[i]["type_id"].get<uint32_t>());
    EXPECT_EQ(ggml_type_name(t.type), infos[i]["type"].get<std::string>());
    EXPECT_EQ(t.ne, infos[i]["ne"].get<std::vector<int64_t>>());
    EXPECT_EQ(t.offset, infos[i]["offset"].get<uint64_t>());
    EXPECT_EQ(t.nbytes, infos[i]["nbytes"].get<uint64_t>());
    EXPECT_EQ(file_->find_tensor(t.name), &t);
  }
  const GgufTensorInfo* q = file_->find_tensor("t.q4_k");
  ASSERT_NE(q, nullptr);
  EXPECT_EQ(q->shape(), (Shape{2, 512}));  // ne reversed
  EXPECT_EQ(file_->find_tensor("nope"), nullptr);
}

TEST_F(GgufTypesTest, DequantizedValuesMatchGgufPyExactly) {
  int checked = 0;
  for (const auto& [name, t] : ref_["tensors"].items()) {
    if (t["expected"].is_null()) continue;  // the Q5_K tensor
    auto r = file_->load_f32(name);
    ASSERT_TRUE(r.ok()) << r.status().to_string();
    const Tensor& x = *r;
    EXPECT_EQ(x.dtype(), DType::kF32);
    const auto ne = t["ne"].get<std::vector<int64_t>>();
    EXPECT_EQ(x.shape(), (Shape{ne[1], ne[0]})) << name;
    ASSERT_EQ(static_cast<size_t>(x.numel()), t["expected"].size()) << name;
    expect_floats_equal(x.data<float>(), t["expected"],
                        name + " (" + t["type"].get<std::string>() + ")");
    ++checked;
  }
  EXPECT_EQ(checked, 9);  // F32 F16 BF16 F64 Q8_0 Q4_0 Q4_1 Q4_K Q6_K
}

TEST_F(GgufTypesTest, UnsupportedTypeOpensButFailsToLoad) {
  const GgufTensorInfo* t = file_->find_tensor("t.q5_k");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(ggml_type_name(t->type), "Q5_K");
  EXPECT_EQ(t->nbytes, 176u);  // size known even though we cannot dequantize it
  auto r = file_->load_f32("t.q5_k");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), ErrorCode::kUnsupported);
  EXPECT_NE(r.status().message().find("Q5_K"), std::string::npos) << r.status().message();
  EXPECT_NE(r.status().message().find("t.q5_k"), std::string::npos) << r.status().message();
}

TEST_F(GgufTypesTest, MissingTensorIsNotFound) {
  auto r = file_->load_f32("missing.weight");
  EXPECT_EQ(r.status().code(), ErrorCode::kNotFound);
  EXPECT_NE(r.status().message().find("missing.weight"), std::string::npos);
}

// v2 has the same layout as v3 (v3 only added big-endian files).
TEST(Gguf, ReadsVersion2) {
  std::string bytes = testing::slurp(fixture_path("formats/types.gguf"));
  const uint32_t v2 = 2;
  std::memcpy(&bytes[4], &v2, 4);
  testing::TempDir dir;
  testing::write_bytes(dir.file("v2.gguf"), bytes);
  auto f = GgufFile::open(dir.file("v2.gguf"));
  ASSERT_TRUE(f.ok()) << f.status().to_string();
  EXPECT_EQ(f->version(), 2u);
  EXPECT_EQ(f->tensors().size(), 10u);
  EXPECT_TRUE(f->load_f32("t.q6_k").ok());
}

TEST(Gguf, TinyHandMadeFile) {
  testing::TempDir dir;
  testing::write_bytes(dir.file("t.gguf"), testing::tiny_gguf(8));
  auto f = GgufFile::open(dir.file("t.gguf"));
  ASSERT_TRUE(f.ok()) << f.status().to_string();
  EXPECT_EQ(f->alignment(), 32u);  // default
  EXPECT_EQ(f->data_offset() % 32, 0u);
  auto t = f->load_f32("w");
  ASSERT_TRUE(t.ok());
  for (int i = 0; i < 8; ++i)
    EXPECT_EQ(t->data<float>()[i], static_cast<float>(i));
  EXPECT_EQ(f->tensor_bytes(*f->find_tensor("w")).size(), 32u);
}

// ---------------------------------------------------------------- real model

class SmolLm2Test : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    ref_ = new json(load_json(fixture_path("formats/smollm2_ref.json")));
    auto f = GgufFile::open(testing::test_model_path());
    ASSERT_TRUE(f.ok()) << f.status().to_string() << " (run scripts/setup.sh)";
    file_ = new GgufFile(std::move(f).value());
  }
  static void TearDownTestSuite() {
    delete file_;
    delete ref_;
    file_ = nullptr;
    ref_ = nullptr;
  }
  void SetUp() override { ASSERT_NE(file_, nullptr); }
  static json* ref_;
  static GgufFile* file_;
};
json* SmolLm2Test::ref_ = nullptr;
GgufFile* SmolLm2Test::file_ = nullptr;

TEST_F(SmolLm2Test, HeaderAndMetadata) {
  const json& r = *ref_;
  EXPECT_EQ(file_->version(), r["version"].get<uint32_t>());
  EXPECT_EQ(file_->tensors().size(), 272u);
  EXPECT_EQ(file_->tensors().size(), r["n_tensors"].get<size_t>());
  EXPECT_EQ(file_->keys().size(), r["n_kv"].get<size_t>());
  EXPECT_EQ(file_->alignment(), 32u);
  EXPECT_EQ(file_->data_offset(), r["data_offset"].get<uint64_t>());
  for (const auto& [key, want] : r["metadata"].items()) {
    if (want.is_string()) {
      EXPECT_EQ(*file_->get_string(key), want.get<std::string>()) << key;
    } else if (want.is_boolean()) {
      EXPECT_EQ(*file_->get_bool(key), want.get<bool>()) << key;
    } else if (want.is_number_integer()) {
      EXPECT_EQ(*file_->get_int(key), want.get<int64_t>()) << key;
    } else {
      EXPECT_EQ(*file_->get_float(key), want.get<double>()) << key;
    }
  }
  EXPECT_EQ(*file_->get_int("llama.block_count"), 30);
  auto tokens = file_->get_string_array("tokenizer.ggml.tokens");
  ASSERT_TRUE(tokens.ok());
  ASSERT_EQ(tokens->size(), r["n_tokens"].get<size_t>());
  const auto head = r["tokens_head"].get<std::vector<std::string>>();
  const auto tail = r["tokens_tail"].get<std::vector<std::string>>();
  for (size_t i = 0; i < head.size(); ++i)
    EXPECT_EQ((*tokens)[i], head[i]);
  for (size_t i = 0; i < tail.size(); ++i) {
    EXPECT_EQ((*tokens)[tokens->size() - tail.size() + i], tail[i]);
  }
  auto merges = file_->get_string_array("tokenizer.ggml.merges");
  ASSERT_TRUE(merges.ok());
  EXPECT_EQ(merges->size(), r["n_merges"].get<size_t>());
  for (size_t i = 0; i < r["merges_head"].size(); ++i) {
    EXPECT_EQ((*merges)[i], r["merges_head"][i].get<std::string>());
  }
  auto types = file_->get_int_array("tokenizer.ggml.token_type");
  ASSERT_TRUE(types.ok());
  for (size_t i = 0; i < r["token_type_head"].size(); ++i) {
    EXPECT_EQ((*types)[i], r["token_type_head"][i].get<int64_t>());
  }
}

TEST_F(SmolLm2Test, TensorInfosMatchGgufPy) {
  const json& infos = (*ref_)["tensor_infos"];
  ASSERT_EQ(file_->tensors().size(), infos.size());
  for (size_t i = 0; i < infos.size(); ++i) {
    const GgufTensorInfo& t = file_->tensors()[i];
    EXPECT_EQ(t.name, infos[i]["name"].get<std::string>());
    EXPECT_EQ(ggml_type_name(t.type), infos[i]["type"].get<std::string>()) << t.name;
    EXPECT_EQ(t.ne, infos[i]["ne"].get<std::vector<int64_t>>()) << t.name;
    EXPECT_EQ(t.offset, infos[i]["offset"].get<uint64_t>()) << t.name;
  }
}

// Rows compared bit for bit with gguf-py; whole-tensor sums (float64) with a
// relative 1e-9, which only absorbs the different summation order.
TEST_F(SmolLm2Test, DequantizedRowsMatchGgufPy) {
  for (const auto& [name, want] : (*ref_)["dequant"].items()) {
    const GgufTensorInfo* info = file_->find_tensor(name);
    ASSERT_NE(info, nullptr) << name;
    EXPECT_EQ(ggml_type_name(info->type), want["type"].get<std::string>());
    const auto t0 = std::chrono::steady_clock::now();
    auto r = file_->load_f32(*info);
    const double secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    ASSERT_TRUE(r.ok()) << r.status().to_string();
    const Tensor& x = *r;
    const int64_t row_len = info->ne[0];
    const auto rows = want["rows"].get<std::vector<int64_t>>();
    for (size_t i = 0; i < rows.size(); ++i) {
      expect_floats_equal(x.data<float>() + rows[i] * row_len, want["values"][i],
                          name + " row " + std::to_string(rows[i]));
    }
    double sum = 0, abs_sum = 0;
    const float* p = x.data<float>();
    for (int64_t i = 0; i < x.numel(); ++i) {
      sum += p[i];
      abs_sum += std::fabs(p[i]);
    }
    const double ws = want["sum"].get<double>(), wa = want["abs_sum"].get<double>();
    EXPECT_NEAR(sum, ws, 1e-9 * wa) << name;
    EXPECT_NEAR(abs_sum, wa, 1e-9 * wa) << name;
    if (x.numel() > 1'000'000) {
      std::cout << "[   info   ] " << name << " (" << want["type"].get<std::string>() << ", "
                << x.numel() << " values): " << secs * 1e3 << " ms, "
                << static_cast<double>(x.nbytes()) / secs / 1e6 << " MB/s fp32 out\n";
    }
  }
}

TEST_F(SmolLm2Test, EveryTensorLoads) {
  uint64_t out_bytes = 0;
  const auto t0 = std::chrono::steady_clock::now();
  for (const GgufTensorInfo& t : file_->tensors()) {
    auto r = file_->load_f32(t);
    ASSERT_TRUE(r.ok()) << r.status().to_string();
    out_bytes += r->nbytes();
    const float* p = r->data<float>();
    for (int64_t i = 0; i < r->numel(); i += 97)
      ASSERT_TRUE(std::isfinite(p[i])) << t.name;
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::cout << "[   info   ] all 272 tensors: " << out_bytes / 1e6 << " MB fp32 in " << secs
            << " s (" << out_bytes / secs / 1e6 << " MB/s incl. allocation)\n";
}

}  // namespace
}  // namespace cartserve
