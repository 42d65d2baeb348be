// Restricted unpickler: Python's own pickle output (tests/fixtures/pickle/cases.json,
// tools/make_cartridge_fixtures.py) decoded into the same tagged JSON encoding,
// plus hand-made opcode streams for stack discipline, memo, limits and refusals.
#include "formats/pickle.h"

#include <gtest/gtest.h>

#include <bit>
#include <fstream>
#include <nlohmann/json.hpp>

#include "formats/pickle_writer.h"
#include "test_util.h"

namespace cartserve::pickle {
namespace {

using namespace std::string_literals;

using nlohmann::json;

std::vector<uint8_t> from_hex(const std::string& hex) {
  std::vector<uint8_t> out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) {
    out.push_back(static_cast<uint8_t>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  }
  return out;
}

std::string to_hex(std::string_view s) {
  std::string out;
  for (unsigned char c : s)
    out += fmt::format("{:02x}", c);
  return out;
}

// The encoding of tools/make_cartridge_fixtures.py:encode().
json encode(const Value& v, int depth = 0) {
  if (depth > 50) return "<deep>";
  const auto seq = [&](const std::vector<const Value*>& items) {
    json a = json::array();
    for (const Value* x : items)
      a.push_back(encode(*x, depth + 1));
    return a;
  };
  switch (v.kind) {
    case Kind::kNone:
      return nullptr;
    case Kind::kBool:
      return v.boolean;
    case Kind::kInt:
      return v.integer;
    case Kind::kFloat:
      return {{"float", fmt::format("{:016x}", std::bit_cast<uint64_t>(v.real))}};
    case Kind::kStr:
      return v.text;
    case Kind::kBytes:
      return {{v.mutable_bytes ? "bytearray" : "bytes", to_hex(v.text)}};
    case Kind::kTuple:
      return {{"tuple", seq(v.items)}};
    case Kind::kList:
      return seq(v.items);
    case Kind::kSet:
      return {{v.frozen ? "frozenset" : "set", seq(v.items)}};
    case Kind::kDict: {
      json a = json::array();
      for (const auto& [k, x] : v.entries)
        a.push_back({encode(*k, depth + 1), encode(*x, depth + 1)});
      return {{v.ordered ? "odict" : "dict", a}};
    }
    case Kind::kGlobal:
      return {{"global", v.global->qualified()}};
    case Kind::kObject:
      return {{"object", v.global->qualified()}};
  }
  return "?";
}

Allowlist python_allowlist() {
  Allowlist a;
  a.allow("collections.OrderedDict", GlobalRole::kDictFactory);
  a.allow("builtins.set", GlobalRole::kSetFactory);
  a.allow("builtins.frozenset", GlobalRole::kSetFactory);
  return a;
}

Result<Document> parse(const std::vector<uint8_t>& bytes, const Allowlist& allow,
                       Limits limits = {}) {
  Options o;
  o.allowlist = &allow;
  o.limits = limits;
  o.label = "test.pkl";
  return unpickle(bytes, o);
}

Result<Document> parse(const std::string& bytes, const Allowlist& allow, Limits limits = {}) {
  return parse(std::vector<uint8_t>(bytes.begin(), bytes.end()), allow, limits);
}

ErrorCode code_from_name(const std::string& n) {
  if (n == "PermissionDenied") return ErrorCode::kPermissionDenied;
  if (n == "OutOfRange") return ErrorCode::kOutOfRange;
  if (n == "Unsupported") return ErrorCode::kUnsupported;
  if (n == "Corrupt") return ErrorCode::kCorrupt;
  ADD_FAILURE() << "unknown code " << n;
  return ErrorCode::kInternal;
}

json load_cases() {
  std::ifstream in(cartserve::testing::fixture_path("pickle/cases.json"));
  EXPECT_TRUE(in.good());
  return json::parse(in);
}

TEST(PickleCases, PythonPicklesDecodeToTheSameValues) {
  const json cases = load_cases();
  ASSERT_GE(cases.size(), 50u);
  const Allowlist allow = python_allowlist();
  int ok = 0, refused = 0;
  for (const auto& c : cases) {
    SCOPED_TRACE(c["name"].get<std::string>());
    auto doc = parse(from_hex(c["hex"]), allow);
    if (c.contains("error")) {
      ASSERT_FALSE(doc.ok());
      EXPECT_EQ(doc.status().code(), code_from_name(c["error"]["code"]))
          << doc.status().to_string();
      EXPECT_NE(doc.status().message().find(c["error"]["message"].get<std::string>()),
                std::string::npos)
          << doc.status().message();
      ++refused;
    } else {
      ASSERT_TRUE(doc.ok()) << doc.status().to_string();
      EXPECT_EQ(encode(doc->root()), c["expected"]);
      EXPECT_EQ(doc->protocol(), c["protocol"].get<int>());
      ++ok;
    }
  }
  EXPECT_GE(ok, 40);
  EXPECT_GE(refused, 9);
}

TEST(PickleCases, NanKeepsItsBits) {
  // float('nan') from Python: 0x7ff8000000000000.
  for (const auto& c : load_cases()) {
    if (c["name"] != "nan_p2") continue;
    auto doc = parse(from_hex(c["hex"]), python_allowlist());
    ASSERT_TRUE(doc.ok());
    EXPECT_EQ(std::bit_cast<uint64_t>(doc->root().items.at(0)->real), 0x7ff8000000000000u);
    return;
  }
  FAIL() << "nan_p2 missing";
}

TEST(PickleCases, RefusedGlobalIsNamedAndNothingElseHappens) {
  // An empty allowlist refuses even OrderedDict, naming it.
  for (const auto& c : load_cases()) {
    if (c["name"] != "ordered_dict_p2") continue;
    Allowlist none;
    auto doc = parse(from_hex(c["hex"]), none);
    ASSERT_FALSE(doc.ok());
    EXPECT_EQ(doc.status().code(), ErrorCode::kPermissionDenied);
    EXPECT_NE(doc.status().message().find("'collections.OrderedDict'"), std::string::npos);
    EXPECT_NE(doc.status().message().find("test.pkl: byte "), std::string::npos);
    return;
  }
  FAIL();
}

// --- hand-made streams --------------------------------------------------------

std::string p2(std::string body) {
  return std::string("\x80\x02", 2) + body + ".";
}

TEST(PickleOps, MemoSharesNodesAndMemoizeCounts) {
  // [x, x] with x = [] memoized by BINPUT 5, then MEMOIZE.
  auto doc =
      parse(p2(std::string("]q\x05") + "h\x05" + std::string("\x94", 1) + "\x86"), Allowlist{});
  ASSERT_TRUE(doc.ok()) << doc.status().to_string();
  const Value& t = doc->root();
  ASSERT_EQ(t.kind, Kind::kTuple);
  ASSERT_EQ(t.items.size(), 2u);
  EXPECT_EQ(t.items[0], t.items[1]);
  EXPECT_FALSE(parse(p2("h\x07"), Allowlist{}).ok());  // undefined memo entry
}

TEST(PickleOps, SelfReferencingListIsFine) {
  // l = []; l.append(l)
  auto doc = parse(p2("]q\x00h\x00"
                      "a"s),
                   Allowlist{});
  ASSERT_TRUE(doc.ok()) << doc.status().to_string();
  const Value& l = doc->root();
  ASSERT_EQ(l.items.size(), 1u);
  EXPECT_EQ(l.items[0], &l);
  EXPECT_FALSE(to_debug_string(l).empty());  // bounded rendering of a cycle
}

TEST(PickleOps, StackDisciplineErrors) {
  const Allowlist none;
  const auto expect_corrupt = [&](const std::string& body, const char* what) {
    auto doc = parse(body, none);
    ASSERT_FALSE(doc.ok()) << what;
    EXPECT_EQ(doc.status().code(), ErrorCode::kCorrupt) << what << ": " << doc.status().message();
  };
  expect_corrupt(p2(""), "STOP on empty stack");
  expect_corrupt(p2("a"), "APPEND on empty stack");
  expect_corrupt(p2("K\x01K\x02"
                    "a"),
                 "APPEND to an int");
  expect_corrupt(p2("}(K\x01u"), "SETITEMS odd");
  expect_corrupt(p2("(K\x01"
                    "1"
                    "1"),
                 "POP_MARK without mark");
  expect_corrupt(p2("e"), "APPENDS without mark");
  expect_corrupt(std::string("\x80\x02]", 3), "no STOP");
  expect_corrupt(p2("X\x10\x00\x00\x00"
                    "abc"s),
                 "string past end");
  expect_corrupt(p2("\x8c\xff"
                    "ab"),
                 "short string past end");
  expect_corrupt(p2(std::string("\x8e\xff\xff\xff\xff\xff\xff\xff\x7f", 9)), "bytes8 huge");
  expect_corrupt(p2(std::string("\x95\x00\x00\x00\x00\x01\x00\x00\x00", 9)), "frame past end");
  expect_corrupt(p2("K\x01"
                    "b"),
                 "BUILD on int");
  expect_corrupt(p2("\xff"), "unknown opcode");
  expect_corrupt(p2("K\x01K\x02"
                    "R"),
                 "REDUCE on an int");
  // A MARK hides the items below it.
  expect_corrupt(p2("K\x01("
                    "a"),
                 "APPEND across a mark");
}

TEST(PickleOps, PopAndDupFollowPython) {
  // MARK, POP (pops the mark), then [1] DUP POP -> [1]
  auto doc = parse(p2("(0]K\x01"
                      "a2"
                      "0"),
                   Allowlist{});
  ASSERT_TRUE(doc.ok()) << doc.status().to_string();
  EXPECT_EQ(encode(doc->root()), json::parse("[1]"));
}

TEST(PickleOps, LongIntegers) {
  const Allowlist none;
  const auto val = [&](std::string body) -> Result<int64_t> {
    auto doc = parse(p2(body), none);
    if (!doc.ok()) return doc.status();
    return doc->root().integer;
  };
  EXPECT_EQ(*val(std::string("\x8a\x00", 2)), 0);  // LONG1 of 0 bytes
  EXPECT_EQ(*val(std::string("\x8a\x01\xff", 3)), -1);
  EXPECT_EQ(*val(std::string("\x8a\x02\x00\x80", 4)), -32768);
  EXPECT_EQ(*val(std::string("\x8a\x09\xff\xff\xff\xff\xff\xff\xff\x7f\x00", 11)), INT64_MAX);
  EXPECT_EQ(*val(std::string("\x8a\x0a\x00\x00\x00\x00\x00\x00\x00\x80\xff\xff", 12)), INT64_MIN);
  EXPECT_EQ(val(std::string("\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x80\x00", 11)).status().code(),
            ErrorCode::kOutOfRange);  // 2**63
  EXPECT_EQ(val(std::string("\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x00\x01", 11)).status().code(),
            ErrorCode::kOutOfRange);                                              // 2**64
  EXPECT_EQ(*val(std::string("\x8b\x03\x00\x00\x00\x01\x02\x03", 8)), 0x030201);  // LONG4
  EXPECT_FALSE(val(std::string("\x8b\xff\xff\xff\x7f\x01", 6)).ok());             // LONG4 past end
  EXPECT_EQ(*val(std::string("J\xfe\xff\xff\xff", 5)), -2);                       // BININT signed
  EXPECT_EQ(*val(std::string("M\xff\xff", 3)), 65535);  // BININT2 unsigned
}

TEST(PickleOps, GlobalsRolesAndRefusals) {
  Allowlist a;
  a.allow("collections.OrderedDict", GlobalRole::kDictFactory);
  a.allow("pkg.Fn", GlobalRole::kFunction);
  a.allow("pkg.Cls", GlobalRole::kClass);
  a.allow("pkg.Const", GlobalRole::kReference);
  a.allow("torch.Size", GlobalRole::kTupleFactory);
  // Fn(1) -> object with args (1,)
  auto doc = parse(p2("cpkg\nFn\nK\x01\x85R"), a);
  ASSERT_TRUE(doc.ok()) << doc.status().to_string();
  EXPECT_TRUE(doc->root().is_global("pkg.Fn"));
  EXPECT_EQ(doc->root().args->items.at(0)->integer, 1);
  // Cls.__new__(Cls) then BUILD({'a': 1}) twice: states merge.
  doc = parse(p2("cpkg\nCls\n)\x81}X\x01\x00\x00\x00"
                 "aK\x01sb}X\x01\x00\x00\x00"
                 "bK\x02sb"s),
              a);
  ASSERT_TRUE(doc.ok()) << doc.status().to_string();
  EXPECT_EQ(doc->root().state->entries.size(), 2u);
  EXPECT_EQ(doc->root().state->find("b")->integer, 2);
  // NEWOBJ of a function and REDUCE of a reference are refused.
  doc = parse(p2("cpkg\nFn\n)\x81"), a);
  EXPECT_EQ(doc.status().code(), ErrorCode::kPermissionDenied);
  doc = parse(p2("cpkg\nConst\n)R"), a);
  EXPECT_EQ(doc.status().code(), ErrorCode::kPermissionDenied);
  EXPECT_NE(doc.status().message().find("pkg.Const"), std::string::npos);
  // A reference as a value is fine.
  doc = parse(p2("cpkg\nConst\n"), a);
  ASSERT_TRUE(doc.ok());
  EXPECT_EQ(doc->root().kind, Kind::kGlobal);
  // STACK_GLOBAL resolves the same names; non-str operands are corrupt.
  doc = parse(p2("\x8c\x03pkg\x8c\x05"
                 "Const\x93"),
              a);
  ASSERT_TRUE(doc.ok());
  doc = parse(p2("K\x01K\x02\x93"), a);
  EXPECT_EQ(doc.status().code(), ErrorCode::kCorrupt);
  // torch.Size((1, 2)) -> tuple
  doc = parse(p2("ctorch\nSize\nK\x01K\x02\x86\x85R"), a);
  ASSERT_TRUE(doc.ok());
  EXPECT_EQ(encode(doc->root()), json::parse(R"({"tuple":[1,2]})"));
  // OrderedDict([(1, 2)])
  doc = parse(p2("ccollections\nOrderedDict\n]K\x01K\x02\x86"
                 "a\x85R"),
              a);
  ASSERT_TRUE(doc.ok()) << doc.status().to_string();
  EXPECT_EQ(encode(doc->root()), json::parse(R"({"odict":[[1,2]]})"));
  // __builtin__ is normalised to builtins before the lookup.
  Allowlist b;
  b.allow("builtins.set", GlobalRole::kSetFactory);
  doc = parse(p2("c__builtin__\nset\n]\x85R"), b);
  ASSERT_TRUE(doc.ok());
  doc = parse(p2("c__builtin__\neval\n"), b);
  EXPECT_NE(doc.status().message().find("'builtins.eval'"), std::string::npos);
  // GLOBAL line without newline / too long.
  EXPECT_EQ(parse(p2("cpkg"), a).status().code(), ErrorCode::kCorrupt);
  EXPECT_EQ(parse(p2("c" + std::string(5000, 'a') + "\nb\n"), a).status().code(),
            ErrorCode::kCorrupt);
}

TEST(PickleOps, RefusedOpcodes) {
  const Allowlist none;
  EXPECT_EQ(parse(p2("\x82\x01"), none).status().code(), ErrorCode::kPermissionDenied);  // EXT1
  EXPECT_EQ(parse(p2("(iFoo\nBar\n"), none).status().code(), ErrorCode::kPermissionDenied);
  EXPECT_EQ(parse(p2("(o"), none).status().code(), ErrorCode::kPermissionDenied);
  EXPECT_EQ(parse(p2("P1\n"), none).status().code(), ErrorCode::kUnsupported);
  EXPECT_EQ(parse(p2("I1\n"), none).status().code(), ErrorCode::kUnsupported);
  EXPECT_EQ(parse(p2("\x97"), none).status().code(), ErrorCode::kUnsupported);  // NEXT_BUFFER
  EXPECT_EQ(parse(p2("\x98"), none).status().code(), ErrorCode::kUnsupported);  // READONLY_BUFFER
  EXPECT_EQ(parse(std::string("\x80\x06N.", 4), none).status().code(), ErrorCode::kUnsupported);
  // BINPERSID without a loader is refused.
  EXPECT_EQ(parse(p2("K\x01Q"), none).status().code(), ErrorCode::kPermissionDenied);
}

TEST(PickleOps, PersistentLoadCallback) {
  Allowlist none;
  Options o;
  o.allowlist = &none;
  o.persistent_load = [](Document& doc, const Value& pid) -> Result<const Value*> {
    if (!pid.is_str("ok")) return make_error(ErrorCode::kNotFound, "no record {}", pid.describe());
    Value* v = doc.make(Kind::kInt);
    v->integer = 42;
    return v;
  };
  const std::string good = p2("X\x02\x00\x00\x00okQ"s);
  auto doc = unpickle(std::span(reinterpret_cast<const uint8_t*>(good.data()), good.size()), o);
  ASSERT_TRUE(doc.ok());
  EXPECT_EQ(doc->root().integer, 42);
  const std::string bad = p2("X\x02\x00\x00\x00noQ"s);
  doc = unpickle(std::span(reinterpret_cast<const uint8_t*>(bad.data()), bad.size()), o);
  EXPECT_EQ(doc.status().code(), ErrorCode::kNotFound);
  EXPECT_NE(doc.status().message().find("no record str 'no'"), std::string::npos);
}

TEST(PickleOps, Limits) {
  const Allowlist none;
  // MARK nesting.
  Limits l;
  l.max_marks = 10;
  EXPECT_EQ(parse(p2(std::string(11, '(')), none, l).status().code(),
            ErrorCode::kResourceExhausted);
  // Node count.
  l = {};
  l.max_nodes = 100;
  std::string many;
  for (int i = 0; i < 200; ++i)
    many += "N";
  EXPECT_EQ(parse(p2(many), none, l).status().code(), ErrorCode::kResourceExhausted);
  // Stream size.
  l = {};
  l.max_bytes = 3;
  EXPECT_EQ(parse(p2("N"), none, l).status().code(), ErrorCode::kResourceExhausted);
  // Deep nesting without marks (EMPTY_LIST / APPEND) parses, and the debug
  // rendering stays bounded.
  std::string deep = "]";
  for (int i = 0; i < 100000; ++i)
    deep += "]";
  for (int i = 0; i < 100000; ++i)
    deep += "a";
  auto doc = parse(p2(deep), none);
  ASSERT_TRUE(doc.ok()) << doc.status().to_string();
  EXPECT_LT(to_debug_string(doc->root(), 8).size(), 100u);
}

TEST(PickleOps, DuplicateKeysReplaceInPlace) {
  // {'a': 1, 'b': 2, 'a': 3} -> {'a': 3, 'b': 2}; True and 1 are the same key.
  auto doc = parse(p2("}(X\x01\x00\x00\x00"
                      "aK\x01X\x01\x00\x00\x00"
                      "bK\x02X\x01\x00\x00\x00"
                      "aK\x03"
                      "K\x01K\x04\x88K\x05u"s),
                   Allowlist{});
  ASSERT_TRUE(doc.ok()) << doc.status().to_string();
  EXPECT_EQ(encode(doc->root()), json::parse(R"({"dict":[["a",3],["b",2],[1,5]]})"));
}

TEST(PickleWriterTest, RoundTripsThroughTheUnpickler) {
  PickleWriter w;
  w.empty_dict();
  w.put();
  w.mark();
  w.str("ints");
  w.empty_list();
  w.put();
  w.mark();
  for (int64_t v : {int64_t{0}, int64_t{255}, int64_t{256}, int64_t{65535}, int64_t{65536},
                    int64_t{-1}, int64_t{INT32_MIN}, int64_t{INT32_MAX} + 1, INT64_MAX, INT64_MIN,
                    int64_t{-129}, int64_t{1} << 40}) {
    w.integer(v);
  }
  w.appends();
  w.str("misc");
  w.mark();
  w.none();
  w.boolean(true);
  w.real(-2.5);
  w.bytes("xy");
  w.bytes(std::string(300, 'z'));
  w.str("ints");  // memoized: BINGET
  w.tuple();
  w.setitems();
  const std::string s = w.finish();
  auto doc = parse(s, Allowlist{});
  ASSERT_TRUE(doc.ok()) << doc.status().to_string();
  std::string z300;
  for (int i = 0; i < 300; ++i)
    z300 += "7a";
  const json want =
      json::parse(R"({"dict":[["ints",[0,255,256,65535,65536,-1,-2147483648,2147483648,)"
                  R"(9223372036854775807,-9223372036854775808,-129,1099511627776]],)"
                  R"(["misc",{"tuple":[null,true,{"float":"c004000000000000"},{"bytes":"7879"},)"
                  R"({"bytes":")" +
                  z300 + R"("},"ints"]}]]})");
  EXPECT_EQ(encode(doc->root()), want);
}

}  // namespace
}  // namespace cartserve::pickle
