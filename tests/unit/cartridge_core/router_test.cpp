#include "cartridge/router.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "cartridge/registry.h"
#include "cartridge_test_util.h"

namespace cartserve {
namespace {

using ::testing::HasSubstr;
using json = nlohmann::json;

RoutingRequest req(std::map<std::string, std::string> params = {},
                   std::map<std::string, std::string> extras = {},
                   std::map<std::string, std::string> labels = {}) {
  RoutingRequest r;
  r.params = std::move(params);
  r.extras = std::move(extras);
  r.labels = std::move(labels);
  return r;
}

// The id a router picks, "<none>" for no answer, "<error: ...>" for a failure.
std::string pick(const CartridgeRouter& r, const RoutingRequest& q) {
  auto id = r.route(q);
  if (!id.ok()) return fmt::format("<error: {}>", id.status().message());
  return id->value_or("<none>");
}

// A fake label index: (key, value) -> ids, in the given order.
LabelLookup table(std::map<std::pair<std::string, std::string>, std::vector<std::string>> t) {
  return [t = std::move(t)](const std::string& k,
                            const std::string& v) -> Result<std::vector<std::string>> {
    auto it = t.find({k, v});
    if (it == t.end()) return std::vector<std::string>{};
    return it->second;
  };
}

// ---- explicit ----

TEST(ExplicitRouter, ReadsKvTransferParams) {
  ExplicitRouter r;
  EXPECT_EQ(pick(r, req({{"cartridge_id", "doc_a"}})), "doc_a");
}

TEST(ExplicitRouter, ReadsTopLevelExtras) {
  ExplicitRouter r;
  EXPECT_EQ(pick(r, req({}, {{"cartridge_id", "patient_00"}})), "patient_00");
}

TEST(ExplicitRouter, TopLevelTakesPrecedence) {
  ExplicitRouter r;
  EXPECT_EQ(pick(r, req({{"cartridge_id", "nested"}}, {{"cartridge_id", "top"}})), "top");
}

TEST(ExplicitRouter, NoAnswerWhenAbsentOrEmpty) {
  ExplicitRouter r;
  EXPECT_EQ(pick(r, req()), "<none>");
  EXPECT_EQ(pick(r, req({{"other", "x"}})), "<none>");
  EXPECT_EQ(pick(r, req({{"cartridge_id", ""}})), "<none>");
  // An empty top-level value does not hide a nested one.
  EXPECT_EQ(pick(r, req({{"cartridge_id", "nested"}}, {{"cartridge_id", ""}})), "nested");
}

TEST(ExplicitRouter, LabelsAreNotExplicitRequests) {
  ExplicitRouter r;
  EXPECT_EQ(pick(r, req({}, {}, {{"cartridge_id", "from_label"}})), "<none>");
}

TEST(ExplicitRouter, CustomKey) {
  ExplicitRouter r("cart");
  EXPECT_EQ(pick(r, req({{"cart", "a"}})), "a");
  EXPECT_EQ(pick(r, req({{"cartridge_id", "b"}})), "<none>");
  EXPECT_EQ(r.describe(), "explicit(key=cart)");
}

// ---- static ----

TEST(StaticRouter, AlwaysTheSameId) {
  StaticRouter r("default");
  EXPECT_EQ(pick(r, req()), "default");
  EXPECT_EQ(pick(r, req({{"cartridge_id", "ignored"}})), "default");
  EXPECT_EQ(r.describe(), "static(default)");
}

// ---- label ----

TEST(LabelRouter, ResolvesFirstMatch) {
  LabelRouter r("patient_id", "patient_id",
                table({{{"patient_id", "P001"}, {"cart_001", "cart_002"}}}));
  EXPECT_EQ(pick(r, req({}, {{"patient_id", "P001"}})), "cart_001");
}

TEST(LabelRouter, MissNoAnswer) {
  LabelRouter r("patient_id", "patient_id", table({}));
  EXPECT_EQ(pick(r, req({}, {{"patient_id", "nobody"}})), "<none>");
}

TEST(LabelRouter, MissingRequestValueNoAnswer) {
  int calls = 0;
  LabelRouter r("patient_id", "patient_id",
                [&](const std::string&, const std::string&) -> Result<std::vector<std::string>> {
                  ++calls;
                  return std::vector<std::string>{"c"};
                });
  EXPECT_EQ(pick(r, req()), "<none>");
  EXPECT_EQ(calls, 0);  // no lookup without a value
}

TEST(LabelRouter, ReadsLabelsThenExtrasThenParams) {
  LabelRouter r("doc_type", "doc_type",
                table({{{"doc_type", "L"}, {"from_labels"}},
                       {{"doc_type", "E"}, {"from_extras"}},
                       {{"doc_type", "P"}, {"from_params"}}}));
  EXPECT_EQ(pick(r, req({{"doc_type", "P"}})), "from_params");
  EXPECT_EQ(pick(r, req({{"doc_type", "P"}}, {{"doc_type", "E"}})), "from_extras");
  EXPECT_EQ(pick(r, req({{"doc_type", "P"}}, {{"doc_type", "E"}}, {{"doc_type", "L"}})),
            "from_labels");
}

TEST(LabelRouter, ExtrasKeyDiffersFromLabelKey) {
  LabelRouter r("patient_id", "pid", table({{{"patient_id", "P7"}, {"cart_7"}}}));
  EXPECT_EQ(pick(r, req({{"pid", "P7"}})), "cart_7");
  EXPECT_EQ(pick(r, req({{"patient_id", "P7"}})), "<none>");
}

TEST(LabelRouter, LookupErrorPropagatesWithContext) {
  LabelRouter r("k", "k",
                [](const std::string&, const std::string&) -> Result<std::vector<std::string>> {
                  return make_error(ErrorCode::kIo, "disk I/O error");
                });
  auto id = r.route(req({{"k", "v"}}));
  ASSERT_FALSE(id.ok());
  EXPECT_EQ(id.status().code(), ErrorCode::kIo);
  EXPECT_THAT(id.status().message(), HasSubstr("label router looking up k=v"));
  EXPECT_THAT(id.status().message(), HasSubstr("disk I/O error"));
}

class LabelRouterRegistry : public ::testing::Test {
 protected:
  void SetUp() override {
    auto r = CartridgeRegistry::open(":memory:");
    ASSERT_TRUE(r.ok());
    registry_ = std::shared_ptr<CartridgeRegistry>(std::move(r).value());
    add("cart_p03", {{"patient_id", "patient_01"}, {"dept", "oncology"}});
    add("cart_p01", {{"patient_id", "patient_01"}});
    add("cart_p02", {{"patient_id", "patient_02"}});
  }
  void add(const std::string& id, std::map<std::string, std::string> labels) {
    CartridgeManifest m = testing::make_manifest(id);
    m.labels = std::move(labels);
    ASSERT_TRUE(registry_->register_cartridge(m, fmt::format("/{}", id)).ok());
  }
  std::shared_ptr<CartridgeRegistry> registry_;
};

TEST_F(LabelRouterRegistry, ResolvesThroughTheRegistryInIdOrder) {
  LabelRouter r("patient_id", "patient_id", registry_label_lookup(registry_));
  EXPECT_EQ(pick(r, req({{"patient_id", "patient_01"}})), "cart_p01");  // not cart_p03
  EXPECT_EQ(pick(r, req({{"patient_id", "patient_02"}})), "cart_p02");
  EXPECT_EQ(pick(r, req({{"patient_id", "patient_99"}})), "<none>");
}

TEST_F(LabelRouterRegistry, FollowsRegistryChanges) {
  LabelRouter r("patient_id", "patient_id", registry_label_lookup(registry_));
  ASSERT_TRUE(registry_->unregister("cart_p01").ok());
  EXPECT_EQ(pick(r, req({{"patient_id", "patient_01"}})), "cart_p03");
  add("cart_p00", {{"patient_id", "patient_01"}});
  EXPECT_EQ(pick(r, req({{"patient_id", "patient_01"}})), "cart_p00");
}

TEST_F(LabelRouterRegistry, BuiltFromJson) {
  RouterDeps deps;
  deps.label_lookup = registry_label_lookup(registry_);
  auto r = make_router(json::parse(R"({"type": "label", "label_key": "dept",
                                       "extras_key": "department"})"),
                       deps);
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_EQ(pick(**r, req({}, {{"department", "oncology"}})), "cart_p03");
  EXPECT_EQ((*r)->describe(), "label(label_key=dept, extras_key=department)");
}

// ---- composite ----

std::unique_ptr<CartridgeRouter> composite(std::vector<std::unique_ptr<CartridgeRouter>> v) {
  return std::make_unique<CompositeRouter>(std::move(v));
}

TEST(CompositeRouter, FirstAnswerWins) {
  std::vector<std::unique_ptr<CartridgeRouter>> v;
  v.push_back(std::make_unique<ExplicitRouter>());
  v.push_back(std::make_unique<StaticRouter>("fallback"));
  auto r = composite(std::move(v));
  EXPECT_EQ(pick(*r, req({{"cartridge_id", "picked"}})), "picked");
  EXPECT_EQ(pick(*r, req()), "fallback");
}

TEST(CompositeRouter, NoAnswerWhenNoneAnswers) {
  std::vector<std::unique_ptr<CartridgeRouter>> v;
  v.push_back(std::make_unique<ExplicitRouter>());
  v.push_back(std::make_unique<ExplicitRouter>("other"));
  EXPECT_EQ(pick(*composite(std::move(v)), req()), "<none>");
}

TEST(CompositeRouter, OrderMatters) {
  std::vector<std::unique_ptr<CartridgeRouter>> a, b;
  a.push_back(std::make_unique<StaticRouter>("first"));
  a.push_back(std::make_unique<StaticRouter>("second"));
  b.push_back(std::make_unique<StaticRouter>("second"));
  b.push_back(std::make_unique<StaticRouter>("first"));
  EXPECT_EQ(pick(*composite(std::move(a)), req()), "first");
  EXPECT_EQ(pick(*composite(std::move(b)), req()), "second");
}

TEST(CompositeRouter, AnErrorStopsTheSearch) {
  std::vector<std::unique_ptr<CartridgeRouter>> v;
  v.push_back(std::make_unique<LabelRouter>(
      "k", "k", [](const std::string&, const std::string&) -> Result<std::vector<std::string>> {
        return make_error(ErrorCode::kIo, "boom");
      }));
  v.push_back(std::make_unique<StaticRouter>("fallback"));
  auto r = composite(std::move(v));
  EXPECT_THAT(pick(*r, req({{"k", "v"}})), HasSubstr("<error:"));
  EXPECT_EQ(pick(*r, req()), "fallback");  // no value: no lookup, no error
}

TEST(CompositeRouter, ExplicitThenLabelThenDefault) {
  std::vector<std::unique_ptr<CartridgeRouter>> v;
  v.push_back(std::make_unique<ExplicitRouter>());
  v.push_back(
      std::make_unique<LabelRouter>("topic", "topic", table({{{"topic", "law"}, {"c_law"}}})));
  v.push_back(std::make_unique<StaticRouter>("c_default"));
  auto r = composite(std::move(v));
  EXPECT_EQ(pick(*r, req({{"cartridge_id", "c_x"}, {"topic", "law"}})), "c_x");
  EXPECT_EQ(pick(*r, req({{"topic", "law"}})), "c_law");
  EXPECT_EQ(pick(*r, req({{"topic", "art"}})), "c_default");
  EXPECT_EQ(r->describe(),
            "composite[explicit(key=cartridge_id), label(label_key=topic, extras_key=topic), "
            "static(c_default)]");
}

// ---- make_router ----

Result<std::unique_ptr<CartridgeRouter>> build(const std::string& text, RouterDeps deps = {}) {
  return make_router(json::parse(text), deps);
}

std::string build_error(const std::string& text, RouterDeps deps = {}) {
  auto r = build(text, std::move(deps));
  if (r.ok()) return fmt::format("<built {}>", (*r)->describe());
  EXPECT_EQ(r.status().code(), ErrorCode::kInvalidArgument);
  return r.status().message();
}

RouterDeps with_default(const std::string& id) {
  RouterDeps d;
  d.default_cartridge_id = id;
  return d;
}

TEST(MakeRouter, EmptyConfigUsesTheDefaultCartridge) {
  for (const char* text : {"{}", "null"}) {
    auto r = build(text, with_default("d"));
    ASSERT_TRUE(r.ok()) << text;
    EXPECT_EQ(pick(**r, req({{"cartridge_id", "x"}})), "d");
    EXPECT_EQ((*r)->describe(), "static(d)");
  }
}

TEST(MakeRouter, EmptyConfigWithoutDefaultIsAnError) {
  EXPECT_THAT(build_error("{}"), HasSubstr("router config is empty"));
  EXPECT_THAT(build_error("null"), HasSubstr("no default cartridge"));
}

TEST(MakeRouter, Explicit) {
  auto r = build(R"({"type": "explicit"})");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(pick(**r, req({{"cartridge_id", "x"}})), "x");
  EXPECT_EQ((*r)->describe(), "explicit(key=cartridge_id)");
}

TEST(MakeRouter, ExplicitCustomKey) {
  auto r = build(R"({"type": "explicit", "key": "cid"})");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(pick(**r, req({{"cid", "y"}})), "y");
  EXPECT_EQ(pick(**r, req({{"cartridge_id", "z"}})), "<none>");
}

TEST(MakeRouter, Static) {
  auto r = build(R"({"type": "static", "cartridge_id": "s"})");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(pick(**r, req()), "s");
}

TEST(MakeRouter, StaticWithoutIdFallsBackToDefault) {
  auto r = build(R"({"type": "static"})", with_default("fallback"));
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(pick(**r, req()), "fallback");
}

TEST(MakeRouter, StaticWithoutAnythingIsAnError) {
  EXPECT_THAT(build_error(R"({"type": "static"})"),
              HasSubstr("static router needs field 'cartridge_id'"));
}

TEST(MakeRouter, LabelRequiresARegistry) {
  EXPECT_THAT(build_error(R"({"type": "label", "label_key": "patient_id"})"),
              HasSubstr("label router needs a cartridge registry"));
}

TEST(MakeRouter, LabelRequiresLabelKey) {
  RouterDeps d;
  d.label_lookup = table({});
  EXPECT_THAT(build_error(R"({"type": "label"})", d),
              HasSubstr("missing required field 'label_key'"));
}

TEST(MakeRouter, LabelExtrasKeyDefaultsToLabelKey) {
  RouterDeps d;
  d.label_lookup = table({{{"patient_id", "X"}, {"c_x"}}});
  auto r = build(R"({"type": "label", "label_key": "patient_id"})", d);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(pick(**r, req({}, {{"patient_id", "X"}})), "c_x");
}

TEST(MakeRouter, Composite) {
  auto r = build(R"({"type": "composite", "routers": [
                       {"type": "explicit"},
                       {"type": "static", "cartridge_id": "fb"}]})");
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_EQ(pick(**r, req({{"cartridge_id", "exp"}})), "exp");
  EXPECT_EQ(pick(**r, req()), "fb");
}

TEST(MakeRouter, NestedComposite) {
  auto r = build(R"({"type": "composite", "routers": [
                       {"type": "composite", "routers": [{"type": "explicit", "key": "a"},
                                                         {"type": "explicit", "key": "b"}]},
                       {"type": "static", "cartridge_id": "z"}]})");
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_EQ(pick(**r, req({{"b", "from_b"}})), "from_b");
  EXPECT_EQ(pick(**r, req({{"a", "from_a"}, {"b", "from_b"}})), "from_a");
  EXPECT_EQ(pick(**r, req()), "z");
}

TEST(MakeRouter, FromTheSeedKvTransferConfig) {
  // Tier 3 of the reference system's validation, as given on the command line.
  const json kv = json::parse(R"({
    "kv_connector": "CartridgeConnector",
    "kv_connector_module_path": "vllm.distributed.kv_transfer.kv_connector.v1.cartridge_connector",
    "kv_connector_extra_config": {
      "cartridges": [
        {"cartridge_id": "doc_a", "path": "cart_a.pt"},
        {"cartridge_id": "doc_b", "path": "cart_b.pt"}
      ],
      "router": {"type": "explicit"}
    },
    "kv_role": "kv_both"
  })");
  auto r = make_router(kv["kv_connector_extra_config"]["router"], with_default("doc_a"));
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(pick(**r, req({{"cartridge_id", "doc_b"}})), "doc_b");
  EXPECT_EQ(pick(**r, req()), "<none>");  // the connector decides what no answer means
}

// ---- malformed configurations: each names what is wrong and where ----

TEST(MakeRouterErrors, NotAnObject) {
  EXPECT_THAT(build_error(R"([{"type": "explicit"}])"),
              HasSubstr("must be a JSON object, got array"));
  EXPECT_THAT(build_error(R"("explicit")"), HasSubstr("got string"));
  EXPECT_THAT(build_error("42"), HasSubstr("got integer"));
}

TEST(MakeRouterErrors, MissingType) {
  EXPECT_THAT(build_error(R"({"key": "cartridge_id"})"),
              HasSubstr("router: missing required field 'type'"));
}

TEST(MakeRouterErrors, TypeNotAString) {
  EXPECT_THAT(build_error(R"({"type": 3})"),
              HasSubstr("field 'type' must be a string, got integer 3"));
  EXPECT_THAT(build_error(R"({"type": ["explicit"]})"), HasSubstr("got array"));
}

TEST(MakeRouterErrors, UnknownTypeIsNamed) {
  const std::string e = build_error(R"({"type": "nonsense"})");
  EXPECT_THAT(e, HasSubstr("unknown router type 'nonsense'"));
  EXPECT_THAT(e, HasSubstr("explicit, static, label or composite"));
  EXPECT_THAT(build_error(R"({"type": "Explicit"})"), HasSubstr("unknown router type 'Explicit'"));
}

TEST(MakeRouterErrors, UnknownFieldIsNamed) {
  RouterDeps d;
  d.label_lookup = table({});
  const std::string e = build_error(R"({"type": "label", "lable_key": "x"})", d);
  EXPECT_THAT(e, HasSubstr("unknown field 'lable_key'"));
  EXPECT_THAT(e, HasSubstr("allowed: type, label_key, extras_key"));
  EXPECT_THAT(build_error(R"({"type": "explicit", "cartridge_id": "x"})"),
              HasSubstr("unknown field 'cartridge_id'"));
}

TEST(MakeRouterErrors, IllTypedFields) {
  EXPECT_THAT(build_error(R"({"type": "explicit", "key": 5})"),
              HasSubstr("field 'key' must be a string, got integer 5"));
  EXPECT_THAT(build_error(R"({"type": "explicit", "key": ""})"),
              HasSubstr("field 'key' must not be empty"));
  EXPECT_THAT(build_error(R"({"type": "static", "cartridge_id": {"id": "a"}})"),
              HasSubstr("field 'cartridge_id' must be a string, got object"));
  RouterDeps d;
  d.label_lookup = table({});
  EXPECT_THAT(build_error(R"({"type": "label", "label_key": "a", "extras_key": true})", d),
              HasSubstr("field 'extras_key' must be a string, got boolean"));
}

TEST(MakeRouterErrors, CompositeRoutersField) {
  EXPECT_THAT(build_error(R"({"type": "composite"})"),
              HasSubstr("composite router needs field 'routers'"));
  EXPECT_THAT(build_error(R"({"type": "composite", "routers": {"type": "explicit"}})"),
              HasSubstr("field 'routers' must be a list, got object"));
  EXPECT_THAT(build_error(R"({"type": "composite", "routers": []})"),
              HasSubstr("field 'routers' must not be empty"));
}

TEST(MakeRouterErrors, NestedErrorsCarryTheirPath) {
  EXPECT_THAT(build_error(R"({"type": "composite", "routers": [{"type": "explicit"},
                                                              {"type": "bogus"}]})"),
              HasSubstr("router.routers[1]: unknown router type 'bogus'"));
  EXPECT_THAT(build_error(R"({"type": "composite", "routers": [{"type": "composite",
                               "routers": [{"type": "static"}]}]})"),
              HasSubstr("router.routers[0].routers[0]: static router needs field"));
  EXPECT_THAT(build_error(R"({"type": "composite", "routers": [{}]})"),
              HasSubstr("router.routers[0]: empty router config"));
  EXPECT_THAT(build_error(R"({"type": "composite", "routers": ["explicit"]})"),
              HasSubstr("router.routers[0]: must be a JSON object, got string"));
}

TEST(MakeRouterErrors, NestingDepthIsBounded) {
  json j = {{"type", "explicit"}};
  for (int i = 0; i < 40; ++i)
    j = {{"type", "composite"}, {"routers", json::array({j})}};
  EXPECT_THAT(build_error(j.dump()), HasSubstr("nested deeper than 16"));
}

}  // namespace
}  // namespace cartserve
