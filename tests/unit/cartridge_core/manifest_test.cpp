#include "cartridge/manifest.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <regex>
#include <string>

#include <nlohmann/json.hpp>

#include "cartridge_test_util.h"
#include "core/mapped_file.h"
#include "test_util.h"

namespace cartserve {
namespace {

using ::testing::HasSubstr;
using testing::make_cartridge;
using testing::make_manifest;
using ::testing::SizeIs;
using testing::TempDir;
using testing::write_bytes;
using json = nlohmann::json;

// SHA-256("abc"), FIPS 180-4 appendix B.1.
constexpr char kAbcSha256[] = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

ServedModelInfo llama_3b() {
  return {"meta-llama/Llama-3.2-3B-Instruct", 28, 8, 128};
}

// ---- JSON round trip ----

TEST(ManifestJson, RoundTripAllFields) {
  const CartridgeManifest m = make_manifest();
  auto back = manifest_from_json(manifest_to_json(m));
  ASSERT_TRUE(back.ok()) << back.status().to_string();
  EXPECT_EQ(*back, m);
}

TEST(ManifestJson, RoundTripThroughText) {
  const CartridgeManifest m = make_manifest();
  auto back = parse_manifest(manifest_to_string(m));
  ASSERT_TRUE(back.ok()) << back.status().to_string();
  EXPECT_EQ(*back, m);
}

TEST(ManifestJson, OptionalFieldsAbsentStayAbsent) {
  CartridgeManifest m = make_manifest();
  m.num_frozen_tokens.reset();
  m.checksum.reset();
  m.file_size_bytes.reset();
  m.created_at.reset();
  m.training_steps.reset();
  m.source_document.reset();
  m.labels.clear();
  const json j = manifest_to_json(m);
  for (const char* k : {"num_frozen_tokens", "checksum", "file_size_bytes", "created_at",
                        "training_steps", "source_document"}) {
    EXPECT_FALSE(j.contains(k)) << k;
  }
  EXPECT_TRUE(j.at("labels").is_object());
  auto back = manifest_from_json(j);
  ASSERT_TRUE(back.ok()) << back.status().to_string();
  EXPECT_EQ(*back, m);
}

TEST(ManifestJson, UsesReferenceFieldNamesAndTypes) {
  const json j = manifest_to_json(make_manifest());
  EXPECT_EQ(j.at("cartridge_id"), "test_cart_01");
  EXPECT_EQ(j.at("dtype"), "bfloat16");
  EXPECT_EQ(j.at("num_layers"), 28);
  EXPECT_EQ(j.at("num_tokens_aligned"), 2048);
  EXPECT_EQ(j.at("num_blocks"), 128);
  EXPECT_EQ(j.at("has_frozen_prefix"), true);
  EXPECT_EQ(j.at("labels").at("patient_id"), "patient_04");
  EXPECT_EQ(j.at("training_steps"), 2694);
}

// What the reference system's CartridgeManifest.to_json writes (dataclass
// asdict, defaults included, plus fields we do not model).
constexpr char kReferenceStyle[] = R"({
  "cartridge_id": "patient_04_longhealth",
  "model_id": "meta-llama/Llama-3.2-3B-Instruct",
  "num_layers": 28,
  "num_kv_heads": 8,
  "head_dim": 128,
  "dtype": "bfloat16",
  "num_tokens_raw": 2049,
  "num_tokens_aligned": 2048,
  "block_size": 16,
  "num_blocks": 128,
  "has_frozen_prefix": true,
  "num_frozen_tokens": 1,
  "checksum": "",
  "file_size_bytes": 0,
  "created_at": "",
  "training_steps": 0,
  "source_document": "",
  "labels": {"patient_id": "patient_04"},
  "resource_kind": "cartridge",
  "source_format": "trainable_cache"
})";

TEST(ManifestJson, ParsesReferenceSystemOutput) {
  auto m = parse_manifest(kReferenceStyle);
  ASSERT_TRUE(m.ok()) << m.status().to_string();
  EXPECT_EQ(m->cartridge_id, "patient_04_longhealth");
  EXPECT_EQ(m->num_tokens_raw, 2049);
  EXPECT_EQ(m->num_tokens_aligned, 2048);
  EXPECT_FALSE(m->checksum.has_value()) << "\"\" means not computed";
  EXPECT_FALSE(m->created_at.has_value());
  EXPECT_EQ(m->file_size_bytes, 0u);
  EXPECT_EQ(m->training_steps, 0);
  EXPECT_EQ(m->source_document, "");
  EXPECT_EQ(m->labels.at("patient_id"), "patient_04");
}

TEST(ManifestJson, IgnoresUnknownKeys) {
  json j = manifest_to_json(make_manifest());
  j["unknown_future_field"] = {{"nested", 1}};
  auto m = manifest_from_json(j);
  ASSERT_TRUE(m.ok()) << m.status().to_string();
  EXPECT_EQ(m->cartridge_id, "test_cart_01");
}

TEST(ManifestJson, AcceptsDtypeAliases) {
  for (const auto& [name, want] :
       std::vector<std::pair<std::string, DType>>{{"bf16", DType::kBF16},
                                                  {"torch.bfloat16", DType::kBF16},
                                                  {"float16", DType::kF16},
                                                  {"fp16", DType::kF16},
                                                  {"float32", DType::kF32},
                                                  {"FP32", DType::kF32}}) {
    json j = manifest_to_json(make_manifest());
    j["dtype"] = name;
    auto m = manifest_from_json(j);
    ASSERT_TRUE(m.ok()) << name << ": " << m.status().to_string();
    EXPECT_EQ(m->dtype, want) << name;
    EXPECT_EQ(manifest_to_json(*m).at("dtype"), dtype_name(want));
  }
}

TEST(ManifestJson, RejectsNonFloatDtypeNamingIt) {
  json j = manifest_to_json(make_manifest());
  j["dtype"] = "int8";
  auto m = manifest_from_json(j);
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_THAT(m.status().message(), HasSubstr("'dtype'"));
  EXPECT_THAT(m.status().message(), HasSubstr("int8"));
}

TEST(ManifestJson, RejectsUnknownDtype) {
  json j = manifest_to_json(make_manifest());
  j["dtype"] = "unknown";
  auto m = manifest_from_json(j);
  ASSERT_FALSE(m.ok());
  EXPECT_THAT(m.status().message(), HasSubstr("'unknown'"));
}

TEST(ManifestJson, UppercaseChecksumIsNormalised) {
  json j = manifest_to_json(make_manifest());
  j["checksum"] = "BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD";
  auto m = manifest_from_json(j);
  ASSERT_TRUE(m.ok()) << m.status().to_string();
  EXPECT_EQ(*m->checksum, kAbcSha256);
}

TEST(ManifestJson, LabelNumbersAndBooleansBecomeText) {
  json j = manifest_to_json(make_manifest());
  j["labels"] = {{"priority", 4}, {"urgent", true}, {"ratio", 0.5}, {"name", "x"}};
  auto m = manifest_from_json(j);
  ASSERT_TRUE(m.ok()) << m.status().to_string();
  EXPECT_EQ(m->labels.at("priority"), "4");
  EXPECT_EQ(m->labels.at("urgent"), "true");
  EXPECT_EQ(m->labels.at("ratio"), "0.5");
  EXPECT_EQ(m->labels.at("name"), "x");
}

TEST(ManifestJson, NullLabelsMeanNone) {
  json j = manifest_to_json(make_manifest());
  j["labels"] = nullptr;
  auto m = manifest_from_json(j);
  ASSERT_TRUE(m.ok()) << m.status().to_string();
  EXPECT_TRUE(m->labels.empty());
}

TEST(ManifestJson, RejectsNestedLabelValue) {
  json j = manifest_to_json(make_manifest());
  j["labels"] = {{"tags", json::array({"a", "b"})}};
  auto m = manifest_from_json(j);
  ASSERT_FALSE(m.ok());
  EXPECT_THAT(m.status().message(), HasSubstr("'labels.tags'"));
  EXPECT_THAT(m.status().message(), HasSubstr("array"));
}

TEST(ManifestJson, RejectsNonObject) {
  auto m = manifest_from_json(json::array({1, 2}));
  ASSERT_FALSE(m.ok());
  EXPECT_THAT(m.status().message(), HasSubstr("JSON object"));
  EXPECT_THAT(m.status().message(), HasSubstr("array"));
}

TEST(ManifestJson, RejectsInvalidJsonText) {
  for (const char* text : {"", "{", "{\"cartridge_id\": }", "not json", "[1,"}) {
    auto m = parse_manifest(text);
    ASSERT_FALSE(m.ok()) << text;
    EXPECT_EQ(m.status().code(), ErrorCode::kInvalidArgument);
  }
}

TEST(ManifestJson, RejectsOutOfRangeInteger) {
  json j = manifest_to_json(make_manifest());
  j["num_layers"] = int64_t{1} << 40;
  auto m = manifest_from_json(j);
  ASSERT_FALSE(m.ok());
  EXPECT_THAT(m.status().message(), HasSubstr("'num_layers'"));
  EXPECT_THAT(m.status().message(), HasSubstr("1099511627776"));
}

TEST(ManifestJson, RejectsHugeUnsignedInteger) {
  json j = manifest_to_json(make_manifest());
  j["file_size_bytes"] = std::numeric_limits<uint64_t>::max();
  auto m = manifest_from_json(j);
  ASSERT_FALSE(m.ok());
  EXPECT_THAT(m.status().message(), HasSubstr("'file_size_bytes'"));
}

// Every required field, removed in turn, is named in the error.
class ManifestMissingField : public ::testing::TestWithParam<const char*> {};

TEST_P(ManifestMissingField, IsNamed) {
  json j = manifest_to_json(make_manifest());
  j.erase(GetParam());
  auto m = manifest_from_json(j);
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_THAT(m.status().message(), HasSubstr(std::string("'") + GetParam() + "'"));
  EXPECT_THAT(m.status().message(), HasSubstr("missing"));
}

INSTANTIATE_TEST_SUITE_P(RequiredFields, ManifestMissingField,
                         ::testing::Values("cartridge_id", "model_id", "num_layers", "num_kv_heads",
                                           "head_dim", "dtype", "num_tokens_raw",
                                           "num_tokens_aligned", "block_size", "num_blocks",
                                           "has_frozen_prefix"));

struct WrongType {
  const char* field;
  json value;
  const char* expect;  // words the message must contain
};

class ManifestWrongType : public ::testing::TestWithParam<WrongType> {};

TEST_P(ManifestWrongType, IsNamedWithTheValue) {
  json j = manifest_to_json(make_manifest());
  j[GetParam().field] = GetParam().value;
  auto m = manifest_from_json(j);
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_THAT(m.status().message(), HasSubstr(std::string("'") + GetParam().field + "'"));
  EXPECT_THAT(m.status().message(), HasSubstr(GetParam().expect));
}

INSTANTIATE_TEST_SUITE_P(
    Fields, ManifestWrongType,
    ::testing::Values(WrongType{"num_layers", "28", "expected an integer, got string"},
                      WrongType{"num_layers", 28.5, "expected an integer, got number"},
                      WrongType{"head_dim", true, "expected an integer, got boolean"},
                      WrongType{"cartridge_id", 5, "expected a string, got integer"},
                      WrongType{"has_frozen_prefix", 1, "expected a boolean, got integer"},
                      WrongType{"labels", json::array({"a"}), "expected an object, got array"},
                      WrongType{"checksum", 123, "expected a string"},
                      WrongType{"training_steps", "many", "expected an integer"},
                      WrongType{"num_kv_heads", -8, "not in [1,"},
                      WrongType{"block_size", 0, "not in [1,"}));

// ---- validate(): internal consistency ----

TEST(ManifestValidate, ReferenceShapeIsValid) {
  EXPECT_TRUE(make_manifest().validate().ok());
}

TEST(ManifestValidate, AlignedCountMustBeRoundedDown) {
  CartridgeManifest m = make_manifest();
  m.num_tokens_raw = 2050;
  m.num_tokens_aligned = 2064;  // rounded up: wrong
  Status s = m.validate();
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(s.message(), HasSubstr("'num_tokens_aligned'"));
  EXPECT_THAT(s.message(), HasSubstr("2064"));
  EXPECT_THAT(s.message(), HasSubstr("expected 2048"));
}

TEST(ManifestValidate, NumBlocksMustMatchAlignedCount) {
  CartridgeManifest m = make_manifest();
  m.num_blocks = 129;
  Status s = m.validate();
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(s.message(), HasSubstr("'num_blocks'"));
  EXPECT_THAT(s.message(), HasSubstr("129"));
  EXPECT_THAT(s.message(), HasSubstr("expected 128"));
}

TEST(ManifestValidate, CartridgeShorterThanABlockHasNoBlocks) {
  CartridgeManifest m = make_manifest();
  m.num_tokens_raw = 10;
  m.num_tokens_aligned = 0;
  m.num_blocks = 0;
  EXPECT_TRUE(m.validate().ok());
}

TEST(ManifestValidate, FrozenPrefixFlagMustAgreeWithCount) {
  CartridgeManifest m = make_manifest();
  m.has_frozen_prefix = false;  // but num_frozen_tokens = 1
  Status s = m.validate();
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(s.message(), HasSubstr("has_frozen_prefix"));
  EXPECT_THAT(s.message(), HasSubstr("num_frozen_tokens is 1"));

  m.has_frozen_prefix = true;
  m.num_frozen_tokens = 0;
  EXPECT_FALSE(m.validate().ok());

  m.num_frozen_tokens.reset();  // count unknown: the flag alone is fine
  EXPECT_TRUE(m.validate().ok());
}

TEST(ManifestValidate, FrozenTokensCannotExceedRaw) {
  CartridgeManifest m = make_manifest();
  m.num_frozen_tokens = 5000;
  Status s = m.validate();
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(s.message(), HasSubstr("'num_frozen_tokens'"));
  EXPECT_THAT(s.message(), HasSubstr("5000"));
}

TEST(ManifestValidate, ChecksumMustBeSha256Hex) {
  CartridgeManifest m = make_manifest();
  m.checksum = "abc123";
  Status s = m.validate();
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(s.message(), HasSubstr("'checksum'"));
  EXPECT_THAT(s.message(), HasSubstr("abc123"));
  m.checksum = kAbcSha256;
  EXPECT_TRUE(m.validate().ok());
}

TEST(ManifestValidate, RejectsIdsThatAreNotUrlSafe) {
  CartridgeManifest m = make_manifest();
  m.cartridge_id = "";
  EXPECT_THAT(m.validate().message(), HasSubstr("'cartridge_id' is empty"));
  m.cartridge_id = "a\nb";
  EXPECT_THAT(m.validate().message(), HasSubstr("byte 0x0a"));
  m.cartridge_id = std::string(300, 'x');
  EXPECT_THAT(m.validate().message(), HasSubstr("300 bytes"));
  // What the probing registered: a path, a composite's key, a directory name.
  for (const char* bad :
       {"../../x", "a/b", "p+q", "a+b@rerotate", "..", ".", "sp ace", "caf\xc3\xa9"}) {
    m.cartridge_id = bad;
    EXPECT_EQ(m.validate().code(), ErrorCode::kInvalidArgument) << bad;
    EXPECT_THAT(m.validate().message(), HasSubstr("manifest field 'cartridge_id'")) << bad;
  }
  const std::string longest(128, 'z');
  for (const std::string good : {"a", "doc_01", "Patient-04.v2", "x~y", "...", longest.c_str()}) {
    m.cartridge_id = good;
    EXPECT_TRUE(m.validate().ok()) << good << ": " << m.validate().message();
  }
}

TEST(ManifestValidate, ManifestJsonWithABadIdIsRefused) {
  nlohmann::json j = manifest_to_json(make_manifest());
  j["cartridge_id"] = "../../etc";
  auto m = manifest_from_json(j);
  ASSERT_FALSE(m.ok());
  EXPECT_THAT(m.status().message(), HasSubstr("'/'"));
}

TEST(ManifestValidate, RejectsNonPositiveDimensions) {
  for (int which = 0; which < 3; ++which) {
    CartridgeManifest m = make_manifest();
    (which == 0 ? m.num_layers : which == 1 ? m.num_kv_heads : m.head_dim) = 0;
    Status s = m.validate();
    ASSERT_FALSE(s.ok());
    EXPECT_THAT(s.message(), HasSubstr(which == 0   ? "'num_layers'"
                                       : which == 1 ? "'num_kv_heads'"
                                                    : "'head_dim'"));
  }
}

TEST(ManifestValidate, RejectsNegativeTrainingStepsAndEmptyLabelKey) {
  CartridgeManifest m = make_manifest();
  m.training_steps = -1;
  EXPECT_THAT(m.validate().message(), HasSubstr("'training_steps'"));
  m = make_manifest();
  m.labels[""] = "x";
  EXPECT_THAT(m.validate().message(), HasSubstr("empty key"));
}

TEST(ManifestValidate, FromJsonRunsValidation) {
  json j = manifest_to_json(make_manifest());
  j["num_blocks"] = 7;
  auto m = manifest_from_json(j);
  ASSERT_FALSE(m.ok());
  EXPECT_THAT(m.status().message(), HasSubstr("'num_blocks'"));
}

TEST(ManifestAlign, RoundsDown) {
  EXPECT_EQ(align_tokens_down(32, 16), 32);
  EXPECT_EQ(align_tokens_down(33, 16), 32);
  EXPECT_EQ(align_tokens_down(31, 16), 16);
  EXPECT_EQ(align_tokens_down(15, 16), 0);
  EXPECT_EQ(align_tokens_down(0, 16), 0);
  EXPECT_EQ(align_tokens_down(100, 0), 0);
}

TEST(ManifestAlign, RealignedRederivesCounts) {
  CartridgeManifest m = make_manifest();
  m.num_tokens_raw = 2049;
  const CartridgeManifest r = m.realigned(32);
  EXPECT_EQ(r.block_size, 32);
  EXPECT_EQ(r.num_tokens_aligned, 2048);
  EXPECT_EQ(r.num_blocks, 64);
  EXPECT_TRUE(r.validate().ok());
  EXPECT_TRUE(r.validate_block_size(32).ok());
}

TEST(ManifestSize, KvBytesMatchesPublishedLlama3bFigure) {
  // performance.md: Llama-3.2-3B holds 112 KiB of KV per token in bf16, so a
  // 2048-token cartridge is 224 MiB.
  CartridgeManifest m = make_manifest();
  m.num_tokens_raw = 1;
  m.num_tokens_aligned = 0;
  m.num_blocks = 0;
  EXPECT_EQ(m.kv_bytes(), 112u * 1024u);
  EXPECT_EQ(make_manifest().kv_bytes(), 224u * 1024u * 1024u);
}

// ---- against the served model ----

TEST(ManifestModel, CompatibleModelPasses) {
  EXPECT_THAT(make_manifest().model_mismatches(llama_3b()), SizeIs(0));
  EXPECT_TRUE(make_manifest().validate_against_model(llama_3b()).ok());
}

TEST(ManifestModel, WrongModelIdNamesBothValues) {
  ServedModelInfo model = llama_3b();
  model.model_id = "Qwen/Qwen2.5-7B-Instruct";
  const auto errs = make_manifest().model_mismatches(model);
  ASSERT_THAT(errs, SizeIs(1));
  EXPECT_EQ(errs[0],
            "model_id: cartridge has 'meta-llama/Llama-3.2-3B-Instruct', model has "
            "'Qwen/Qwen2.5-7B-Instruct'");
}

TEST(ManifestModel, WrongLayersNamesBothValues) {
  ServedModelInfo model = llama_3b();
  model.num_layers = 32;
  const auto errs = make_manifest().model_mismatches(model);
  ASSERT_THAT(errs, SizeIs(1));
  EXPECT_EQ(errs[0], "num_layers: cartridge has 28, model has 32");
}

TEST(ManifestModel, WrongKvHeadsNamesBothValues) {
  ServedModelInfo model = llama_3b();
  model.num_kv_heads = 4;
  const auto errs = make_manifest().model_mismatches(model);
  ASSERT_THAT(errs, SizeIs(1));
  EXPECT_EQ(errs[0], "num_kv_heads: cartridge has 8, model has 4");
}

TEST(ManifestModel, WrongHeadDimNamesBothValues) {
  ServedModelInfo model = llama_3b();
  model.head_dim = 64;
  const auto errs = make_manifest().model_mismatches(model);
  ASSERT_THAT(errs, SizeIs(1));
  EXPECT_EQ(errs[0], "head_dim: cartridge has 128, model has 64");
}

TEST(ManifestModel, AllMismatchesReportedTogether) {
  const ServedModelInfo model{"wrong/model", 99, 98, 97};
  EXPECT_THAT(make_manifest().model_mismatches(model), SizeIs(4));
  Status s = make_manifest().validate_against_model(model);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), ErrorCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("test_cart_01"));
  for (const char* part : {"model_id", "num_layers: cartridge has 28, model has 99",
                           "num_kv_heads: cartridge has 8, model has 98",
                           "head_dim: cartridge has 128, model has 97"}) {
    EXPECT_THAT(s.message(), HasSubstr(part));
  }
}

TEST(ManifestModel, UnknownModelIdOnEitherSideIsNotChecked) {
  ServedModelInfo model = llama_3b();
  model.model_id = "";
  EXPECT_TRUE(make_manifest().validate_against_model(model).ok());
  CartridgeManifest m = make_manifest();
  m.model_id = "";
  EXPECT_TRUE(m.validate_against_model(llama_3b()).ok());
  // Unknown model id does not hide shape mismatches.
  model.num_layers = 16;
  EXPECT_FALSE(make_manifest().validate_against_model(model).ok());
}

TEST(ManifestModel, ModelIdMatching) {
  EXPECT_TRUE(model_ids_match("meta-llama/Llama-3.2-3B-Instruct", "Llama-3.2-3B-Instruct"));
  EXPECT_TRUE(model_ids_match("llama-3.2-3b-instruct", "meta-llama/Llama-3.2-3B-Instruct"));
  EXPECT_TRUE(model_ids_match("/models/Llama-3.2-3B-Instruct/", "Llama-3.2-3B-Instruct"));
  EXPECT_TRUE(
      model_ids_match("Meta-Llama/Llama-3.2-3B-Instruct", "meta-llama/llama-3.2-3b-instruct"));
  EXPECT_FALSE(model_ids_match("org-a/model", "org-b/model"));
  EXPECT_FALSE(model_ids_match("Llama-3.2-3B-Instruct", "Llama-3.2-1B-Instruct"));
  EXPECT_FALSE(model_ids_match("meta-llama/Llama-3.2-3B-Instruct", "Qwen2.5-7B-Instruct"));
}

// ---- against the server block size ----

TEST(ManifestBlockSize, MatchingBlockSizePasses) {
  EXPECT_TRUE(make_manifest().validate_block_size(16).ok());
}

TEST(ManifestBlockSize, MismatchNamesFieldAndBothValues) {
  Status s = make_manifest().validate_block_size(32);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), ErrorCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("block_size: cartridge has 16, server has 32"));
}

TEST(ManifestBlockSize, InconsistentAlignedCountIsReported) {
  CartridgeManifest m = make_manifest();
  m.num_tokens_aligned = 2032;  // bypassing validate()
  Status s = m.validate_block_size(16);
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(s.message(), HasSubstr("num_tokens_aligned: cartridge has 2032"));
  EXPECT_THAT(s.message(), HasSubstr("gives 2048"));
}

TEST(ManifestBlockSize, NonPositiveServerBlockSize) {
  EXPECT_FALSE(make_manifest().validate_block_size(0).ok());
}

// ---- against the loaded data ----

CartridgeManifest manifest_of(const CartridgeData& c) {
  return testing::manifest_for("c", c);
}

TEST(ManifestData, MatchingDataPasses) {
  const CartridgeData c = make_cartridge(2, 2, 9, 4, DType::kBF16, 1);
  EXPECT_TRUE(manifest_of(c).validate_against_data(c).ok());
}

TEST(ManifestData, DtypeMismatchNamesBothDtypes) {
  const CartridgeData c = make_cartridge(2, 2, 8, 4, DType::kF32);
  CartridgeManifest m = manifest_of(c);
  m.dtype = DType::kBF16;
  Status s = m.validate_against_data(c);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), ErrorCode::kCorrupt);
  EXPECT_THAT(s.message(), HasSubstr("dtype: manifest has bfloat16, data has float32"));
}

TEST(ManifestData, ShapeMismatchesAreAllListed) {
  const CartridgeData c = make_cartridge(2, 2, 8, 4);
  CartridgeManifest m = manifest_of(make_cartridge(3, 4, 12, 8));
  Status s = m.validate_against_data(c);
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(s.message(), HasSubstr("num_layers: manifest has 3, data has 2"));
  EXPECT_THAT(s.message(), HasSubstr("num_kv_heads: manifest has 4, data has 2"));
  EXPECT_THAT(s.message(), HasSubstr("head_dim: manifest has 8, data has 4"));
  EXPECT_THAT(s.message(), HasSubstr("num_tokens_raw: manifest has 12, data has 8"));
}

TEST(ManifestData, FrozenTokenMismatch) {
  const CartridgeData c = make_cartridge(1, 1, 8, 4, DType::kBF16, 2);
  CartridgeManifest m = manifest_of(c);
  m.num_frozen_tokens = 1;
  EXPECT_THAT(m.validate_against_data(c).message(),
              HasSubstr("num_frozen_tokens: manifest has 1, data has 2"));
  m.num_frozen_tokens.reset();
  m.has_frozen_prefix = false;
  EXPECT_THAT(m.validate_against_data(c).message(), HasSubstr("has_frozen_prefix"));
}

// ---- file checksum ----

TEST(ManifestFile, VerifiesKnownSha256Vector) {
  TempDir dir;
  const std::string path = dir.file("abc.pt");
  write_bytes(path, "abc");
  CartridgeManifest m = make_manifest();
  m.checksum = kAbcSha256;
  m.file_size_bytes = 3;
  EXPECT_TRUE(m.verify_file(path).ok()) << m.verify_file(path).to_string();
}

TEST(ManifestFile, ChecksumMismatchNamesBothDigests) {
  TempDir dir;
  const std::string path = dir.file("abd.pt");
  write_bytes(path, "abd");
  CartridgeManifest m = make_manifest();
  m.checksum = kAbcSha256;
  m.file_size_bytes = 3;
  Status s = m.verify_file(path);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), ErrorCode::kCorrupt);
  EXPECT_THAT(s.message(), HasSubstr("checksum"));
  EXPECT_THAT(s.message(), HasSubstr(kAbcSha256));
  EXPECT_THAT(s.message(),
              HasSubstr("a52d159f262b2c6ddb724a61840befc36eb30c88877a4030b65cbe86298449c9"));
}

TEST(ManifestFile, SizeMismatchIsReportedBeforeHashing) {
  TempDir dir;
  const std::string path = dir.file("c.pt");
  write_bytes(path, "abcd");
  CartridgeManifest m = make_manifest();
  m.checksum = kAbcSha256;
  m.file_size_bytes = 3;
  Status s = m.verify_file(path);
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(s.message(), HasSubstr("file_size_bytes: manifest has 3"));
  EXPECT_THAT(s.message(), HasSubstr("has 4"));
}

TEST(ManifestFile, ZeroSizeMeansUnknown) {
  TempDir dir;
  const std::string path = dir.file("c.pt");
  write_bytes(path, "abc");
  CartridgeManifest m = make_manifest();
  m.checksum = kAbcSha256;
  m.file_size_bytes = 0;
  EXPECT_TRUE(m.verify_file(path).ok());
}

TEST(ManifestFile, MissingFileIsAnError) {
  CartridgeManifest m = make_manifest();
  m.checksum = kAbcSha256;
  m.file_size_bytes.reset();
  Status s = m.verify_file("/nonexistent/cartridge.pt");
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(s.message(), HasSubstr("/nonexistent/cartridge.pt"));
}

TEST(ManifestFile, NothingToCheckPasses) {
  CartridgeManifest m = make_manifest();
  m.checksum.reset();
  m.file_size_bytes.reset();
  EXPECT_TRUE(m.verify_file("/nonexistent/cartridge.pt").ok());
}

TEST(ManifestFile, WriteThenReadBack) {
  TempDir dir;
  const std::string path = dir.file("m.json");
  ASSERT_TRUE(write_manifest(path, make_manifest()).ok());
  auto m = read_manifest(path);
  ASSERT_TRUE(m.ok()) << m.status().to_string();
  EXPECT_EQ(*m, make_manifest());
  // The file is plain JSON a Python reader can load.
  auto text = read_file(path);
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(json::parse(*text).at("num_kv_heads"), 8);
}

TEST(ManifestFile, WriteRefusesInvalidManifest) {
  TempDir dir;
  CartridgeManifest m = make_manifest();
  m.num_blocks = 3;
  EXPECT_FALSE(write_manifest(dir.file("m.json"), m).ok());
  EXPECT_FALSE(std::filesystem::exists(dir.file("m.json")));
}

TEST(ManifestFile, ReadErrorNamesThePath) {
  TempDir dir;
  const std::string path = dir.file("bad.json");
  write_bytes(path, "{\"cartridge_id\": 1}");
  auto m = read_manifest(path);
  ASSERT_FALSE(m.ok());
  EXPECT_THAT(m.status().message(), HasSubstr(path));
  EXPECT_THAT(m.status().message(), HasSubstr("'cartridge_id'"));
  EXPECT_FALSE(read_manifest(dir.file("missing.json")).ok());
}

// ---- derived from loaded data ----

TEST(ManifestDerive, FromDataAndFile) {
  TempDir dir;
  const std::string path = dir.file("patient_07.pt");
  write_bytes(path, "abc");  // the data comes from elsewhere; only the bytes are hashed
  const CartridgeData c = make_cartridge(4, 2, 32, 8, DType::kBF16, 1);
  ManifestOptions o;
  o.model_id = "test/model";
  o.block_size = 16;
  o.labels = {{"doc_id", "doc_001"}};
  o.training_steps = 100;
  auto m = manifest_from_cartridge(c, path, o);
  ASSERT_TRUE(m.ok()) << m.status().to_string();
  EXPECT_EQ(m->cartridge_id, "patient_07");
  EXPECT_EQ(m->model_id, "test/model");
  EXPECT_EQ(m->num_layers, 4);
  EXPECT_EQ(m->num_kv_heads, 2);
  EXPECT_EQ(m->head_dim, 8);
  EXPECT_EQ(m->dtype, DType::kBF16);
  EXPECT_EQ(m->num_tokens_raw, 32);
  EXPECT_EQ(m->num_tokens_aligned, 32);
  EXPECT_EQ(m->num_blocks, 2);
  EXPECT_TRUE(m->has_frozen_prefix);
  EXPECT_EQ(m->num_frozen_tokens, 1);
  EXPECT_EQ(m->checksum, kAbcSha256);
  EXPECT_EQ(m->file_size_bytes, 3u);
  ASSERT_TRUE(m->created_at.has_value());
  EXPECT_TRUE(std::regex_match(*m->created_at, std::regex(R"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)")))
      << *m->created_at;
  EXPECT_EQ(m->training_steps, 100);
  EXPECT_EQ(m->labels.at("doc_id"), "doc_001");
  EXPECT_TRUE(m->validate_against_data(c).ok());
  EXPECT_TRUE(m->verify_file(path).ok());
}

TEST(ManifestDerive, UnalignedTokensAndExplicitId) {
  const CartridgeData c = make_cartridge(1, 1, 37, 4, DType::kF32);
  ManifestOptions o;
  o.cartridge_id = "given";
  o.block_size = 16;
  auto m = manifest_from_cartridge(c, "", o);
  ASSERT_TRUE(m.ok()) << m.status().to_string();
  EXPECT_EQ(m->cartridge_id, "given");
  EXPECT_EQ(m->num_tokens_aligned, 32);
  EXPECT_EQ(m->num_blocks, 2);
  EXPECT_FALSE(m->has_frozen_prefix);
  EXPECT_FALSE(m->checksum.has_value());
  EXPECT_FALSE(m->file_size_bytes.has_value());
  EXPECT_EQ(m->dtype, DType::kF32);
}

TEST(ManifestDerive, NoChecksumWhenNotAsked) {
  TempDir dir;
  const std::string path = dir.file("x.pt");
  write_bytes(path, "abc");
  ManifestOptions o;
  o.compute_checksum = false;
  auto m = manifest_from_cartridge(make_cartridge(1, 1, 4, 4), path, o);
  ASSERT_TRUE(m.ok());
  EXPECT_FALSE(m->checksum.has_value());
  EXPECT_EQ(m->file_size_bytes, 3u);
}

TEST(ManifestDerive, RejectsInvalidDataAndMissingId) {
  CartridgeData bad = make_cartridge(2, 1, 4, 4);
  bad.values.pop_back();
  EXPECT_FALSE(manifest_from_cartridge(bad, "", {}).ok());
  // No path and no id: the id cannot be derived.
  auto m = manifest_from_cartridge(make_cartridge(1, 1, 4, 4), "", {});
  ASSERT_FALSE(m.ok());
  EXPECT_THAT(m.status().message(), HasSubstr("'cartridge_id' is empty"));
}

TEST(ManifestDerive, MissingFileIsAnError) {
  ManifestOptions o;
  o.cartridge_id = "x";
  EXPECT_FALSE(manifest_from_cartridge(make_cartridge(1, 1, 4, 4), "/nonexistent/x.pt", o).ok());
}

}  // namespace
}  // namespace cartserve
