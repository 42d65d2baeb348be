#include "cartridge/registry.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <regex>
#include <set>
#include <thread>

#include "cartridge/sqlite_db.h"
#include "cartridge_test_util.h"
#include "test_util.h"

namespace cartserve {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using testing::make_manifest;
using testing::TempDir;

CartridgeManifest manifest(const std::string& id, std::map<std::string, std::string> labels = {},
                           const std::string& model = "meta-llama/Llama-3.2-3B-Instruct") {
  CartridgeManifest m = make_manifest(id);
  m.labels = std::move(labels);
  m.model_id = model;
  return m;
}

std::vector<std::string> ids_of(const std::vector<RegistryEntry>& v) {
  std::vector<std::string> out;
  for (const auto& e : v)
    out.push_back(e.manifest.cartridge_id);
  return out;
}

// synchronous=NORMAL keeps the suite fast (no fsync per commit); the crash
// test below runs with the default (FULL).
RegistryOptions fast_options() {
  RegistryOptions o;
  o.synchronous_full = false;
  return o;
}

class RegistryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = dir_.file("registry.db");
    auto r = CartridgeRegistry::open(path_, fast_options());
    ASSERT_TRUE(r.ok()) << r.status().to_string();
    reg_ = std::move(r).value();
  }
  void reopen() {
    reg_.reset();
    auto r = CartridgeRegistry::open(path_, fast_options());
    ASSERT_TRUE(r.ok()) << r.status().to_string();
    reg_ = std::move(r).value();
  }
  void add(const CartridgeManifest& m, const std::string& path = "/carts/x.pt") {
    Status s = reg_->register_cartridge(m, path);
    ASSERT_TRUE(s.ok()) << s.to_string();
  }

  TempDir dir_;
  std::string path_;
  std::unique_ptr<CartridgeRegistry> reg_;
};

// ---- schema and pragmas ----

TEST_F(RegistryTest, CreatesSchemaVersionOne) {
  auto db = SqliteDb::open(path_);
  ASSERT_TRUE(db.ok());
  auto v = read_schema_version(*db);
  ASSERT_TRUE(v.ok()) << v.status().to_string();
  EXPECT_EQ(*v, CartridgeRegistry::kSchemaVersion);
  EXPECT_EQ(*v, 1);
}

TEST_F(RegistryTest, UsesWalJournal) {
  auto db = SqliteDb::open(path_);
  ASSERT_TRUE(db.ok());
  auto mode = db->query_text("PRAGMA journal_mode");
  ASSERT_TRUE(mode.ok());
  EXPECT_EQ(*mode, "wal");
}

TEST_F(RegistryTest, HasOneColumnPerManifestField) {
  auto db = SqliteDb::open(path_);
  ASSERT_TRUE(db.ok());
  auto st = db->prepare("SELECT name FROM pragma_table_info('cartridges')");
  ASSERT_TRUE(st.ok());
  std::set<std::string> cols;
  while (true) {
    auto row = st->step();
    ASSERT_TRUE(row.ok());
    if (!*row) break;
    cols.insert(st->column_text(0));
  }
  for (const char* c : {"cartridge_id",   "model_id",           "num_layers",
                        "num_kv_heads",   "head_dim",           "dtype",
                        "num_tokens_raw", "num_tokens_aligned", "block_size",
                        "num_blocks",     "has_frozen_prefix",  "num_frozen_tokens",
                        "checksum",       "file_size_bytes",    "created_at",
                        "training_steps", "source_document",    "labels",
                        "path",           "manifest_json",      "registered_at",
                        "updated_at"}) {
    EXPECT_TRUE(cols.count(c)) << c;
  }
}

TEST_F(RegistryTest, IntegrityCheckOk) {
  add(manifest("a"));
  auto ok = reg_->integrity_check();
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(*ok, "ok");
}

TEST(Registry, InMemoryDatabaseWorks) {
  auto r = CartridgeRegistry::open(":memory:");
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  ASSERT_TRUE((*r)->register_cartridge(manifest("a"), "").ok());
  EXPECT_EQ(*(*r)->count(), 1);
}

// ---- register / get / count / unregister ----

TEST_F(RegistryTest, RegisterAndGetRoundTripsEveryField) {
  const CartridgeManifest m = make_manifest("cart_01");
  add(m, "/carts/cart_01.pt");
  auto e = reg_->get("cart_01");
  ASSERT_TRUE(e.ok()) << e.status().to_string();
  ASSERT_TRUE(e->has_value());
  EXPECT_EQ((*e)->manifest, m);
  EXPECT_EQ((*e)->path, "/carts/cart_01.pt");
}

TEST_F(RegistryTest, AbsentOptionalFieldsStayAbsent) {
  CartridgeManifest m = manifest("bare");
  m.num_frozen_tokens.reset();
  m.checksum.reset();
  m.file_size_bytes.reset();
  m.created_at.reset();
  m.training_steps.reset();
  m.source_document.reset();
  add(m, "");
  auto e = reg_->get("bare");
  ASSERT_TRUE(e.ok() && e->has_value());
  EXPECT_EQ((*e)->manifest, m);
}

TEST_F(RegistryTest, StoresManifestJson) {
  add(make_manifest("j"));
  auto db = SqliteDb::open(path_);
  ASSERT_TRUE(db.ok());
  auto text = db->query_text("SELECT manifest_json FROM cartridges WHERE cartridge_id = 'j'");
  ASSERT_TRUE(text.ok());
  auto back = parse_manifest(*text);
  ASSERT_TRUE(back.ok()) << back.status().to_string();
  EXPECT_EQ(*back, make_manifest("j"));
}

TEST_F(RegistryTest, TimestampsAreIso8601Utc) {
  add(manifest("t"));
  auto e = reg_->get("t");
  ASSERT_TRUE(e.ok() && e->has_value());
  const std::regex iso(R"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z)");
  EXPECT_TRUE(std::regex_match((*e)->registered_at, iso)) << (*e)->registered_at;
  EXPECT_TRUE(std::regex_match((*e)->updated_at, iso)) << (*e)->updated_at;
}

TEST_F(RegistryTest, GetMissingIsEmpty) {
  auto e = reg_->get("nonexistent");
  ASSERT_TRUE(e.ok());
  EXPECT_FALSE(e->has_value());
}

TEST_F(RegistryTest, CountFollowsRegistrations) {
  EXPECT_EQ(*reg_->count(), 0);
  add(manifest("cart_01"));
  EXPECT_EQ(*reg_->count(), 1);
  add(manifest("cart_02"));
  EXPECT_EQ(*reg_->count(), 2);
}

TEST_F(RegistryTest, ReRegisterReplacesAndKeepsFirstRegistration) {
  CartridgeManifest m = manifest("cart_01");
  m.training_steps = 100;
  add(m, "/old.pt");
  auto first = reg_->get("cart_01");
  ASSERT_TRUE(first.ok() && first->has_value());
  std::this_thread::sleep_for(std::chrono::milliseconds(5));
  m.training_steps = 2694;
  m.labels = {{"v", "2"}};
  add(m, "/new.pt");
  auto second = reg_->get("cart_01");
  ASSERT_TRUE(second.ok() && second->has_value());
  EXPECT_EQ((*second)->manifest.training_steps, 2694);
  EXPECT_EQ((*second)->manifest.labels.at("v"), "2");
  EXPECT_EQ((*second)->path, "/new.pt");
  EXPECT_EQ(*reg_->count(), 1);
  EXPECT_EQ((*second)->registered_at, (*first)->registered_at);
  EXPECT_GT((*second)->updated_at, (*first)->updated_at);
}

TEST_F(RegistryTest, UnregisterExistingAndMissing) {
  add(manifest("cart_01"));
  auto r = reg_->unregister("cart_01");
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(*r);
  EXPECT_FALSE(reg_->get("cart_01")->has_value());
  EXPECT_EQ(*reg_->count(), 0);
  auto again = reg_->unregister("cart_01");
  ASSERT_TRUE(again.ok());
  EXPECT_FALSE(*again);
}

TEST_F(RegistryTest, RejectsInvalidManifestNamingField) {
  CartridgeManifest m = manifest("bad");
  m.num_blocks = 1;
  Status s = reg_->register_cartridge(m, "");
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(s.message(), HasSubstr("'bad'"));
  EXPECT_THAT(s.message(), HasSubstr("num_blocks"));
  EXPECT_EQ(*reg_->count(), 0);
}

TEST_F(RegistryTest, IdsAreCaseSensitiveAndExact) {
  add(manifest("Doc"));
  EXPECT_FALSE(reg_->get("doc")->has_value());
  EXPECT_FALSE(reg_->get("Doc ")->has_value());
  EXPECT_TRUE(reg_->get("Doc")->has_value());
}

// Ids are URL-safe (cartridge_id.h); labels keep any text.
TEST_F(RegistryTest, UnicodeAndQuotesSurviveInLabels) {
  add(manifest("cafe.quoted_single~1", {{"ключ", "значение \"q\" 'single'"}}));
  auto e = reg_->get("cafe.quoted_single~1");
  ASSERT_TRUE(e.ok() && e->has_value());
  EXPECT_EQ((*e)->manifest.labels.at("ключ"), "значение \"q\" 'single'");
  auto found = reg_->find_by_label("ключ", "значение \"q\" 'single'");
  ASSERT_TRUE(found.ok());
  EXPECT_THAT(ids_of(*found), ElementsAre("cafe.quoted_single~1"));
}

TEST_F(RegistryTest, RefusesIdsOutsideTheIdSet) {
  for (const char* bad : {"../../x", "p+q", "café", ".."}) {
    Status s = reg_->register_cartridge(manifest(bad), "");
    EXPECT_EQ(s.code(), ErrorCode::kInvalidArgument) << bad;
  }
  EXPECT_EQ(*reg_->count(), 0);
}

// ---- lookups ----

TEST_F(RegistryTest, FindByLabelReturnsEveryMatch) {
  add(manifest("cart_p01", {{"patient_id", "patient_01"}}));
  add(manifest("cart_p02", {{"patient_id", "patient_02"}}));
  add(manifest("cart_p03", {{"patient_id", "patient_01"}, {"dept", "oncology"}}));
  auto r = reg_->find_by_label("patient_id", "patient_01");
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_THAT(ids_of(*r), ElementsAre("cart_p01", "cart_p03"));
}

TEST_F(RegistryTest, FindByLabelOrderIsByIdNotInsertion) {
  for (const char* id : {"zeta", "alpha", "mike", "Bravo", "alpha2"}) {
    add(manifest(id, {{"doc_type", "record"}}));
  }
  auto r = reg_->find_by_label("doc_type", "record");
  ASSERT_TRUE(r.ok());
  // Byte order: upper case sorts before lower case.
  EXPECT_THAT(ids_of(*r), ElementsAre("Bravo", "alpha", "alpha2", "mike", "zeta"));
  auto ids = reg_->ids_by_label("doc_type", "record");
  ASSERT_TRUE(ids.ok());
  EXPECT_THAT(*ids, ElementsAre("Bravo", "alpha", "alpha2", "mike", "zeta"));
}

TEST_F(RegistryTest, FindByLabelOrderSurvivesReRegistration) {
  add(manifest("b", {{"k", "v"}}));
  add(manifest("a", {{"k", "v"}}));
  add(manifest("b", {{"k", "v"}}));  // replace: must not move b first or last by accident
  auto ids = reg_->ids_by_label("k", "v");
  ASSERT_TRUE(ids.ok());
  EXPECT_THAT(*ids, ElementsAre("a", "b"));
}

TEST_F(RegistryTest, FindByLabelNoMatchAndMissingKey) {
  add(manifest("cart_01", {{"patient_id", "patient_01"}}));
  EXPECT_TRUE(reg_->find_by_label("patient_id", "patient_99")->empty());
  EXPECT_TRUE(reg_->find_by_label("department", "oncology")->empty());
  EXPECT_TRUE(reg_->find_by_label("", "")->empty());
}

TEST_F(RegistryTest, FindByLabelMatchesKeysWithJsonPathCharacters) {
  // Keys are compared as data (json_each), never spliced into a JSON path.
  add(manifest("a", {{"weird.key", "1"}, {"$[0]", "2"}, {"qu\"ote", "3"}}));
  add(manifest("b", {{"weird", "x"}}));
  EXPECT_THAT(*reg_->ids_by_label("weird.key", "1"), ElementsAre("a"));
  EXPECT_THAT(*reg_->ids_by_label("$[0]", "2"), ElementsAre("a"));
  EXPECT_THAT(*reg_->ids_by_label("qu\"ote", "3"), ElementsAre("a"));
  EXPECT_TRUE(reg_->ids_by_label("weird", "1")->empty());
}

TEST_F(RegistryTest, FindByLabelValueIsExactText) {
  add(manifest("a", {{"n", "4"}}));
  add(manifest("b", {{"n", "04"}}));
  EXPECT_THAT(*reg_->ids_by_label("n", "4"), ElementsAre("a"));
  EXPECT_THAT(*reg_->ids_by_label("n", "04"), ElementsAre("b"));
  EXPECT_TRUE(reg_->ids_by_label("n", "4.0")->empty());
}

TEST_F(RegistryTest, FindByModel) {
  add(manifest("cart_llama", {}, "meta-llama/Llama-3.2-3B-Instruct"));
  add(manifest("cart_qwen", {}, "Qwen/Qwen2.5-7B-Instruct"));
  add(manifest("cart_llama_b", {}, "meta-llama/Llama-3.2-3B-Instruct"));
  auto r = reg_->find_by_model("meta-llama/Llama-3.2-3B-Instruct");
  ASSERT_TRUE(r.ok());
  EXPECT_THAT(ids_of(*r), ElementsAre("cart_llama", "cart_llama_b"));
  EXPECT_TRUE(reg_->find_by_model("nobody/none")->empty());
}

TEST_F(RegistryTest, ListEmptyAndOrdered) {
  EXPECT_TRUE(reg_->list()->empty());
  for (int i = 4; i >= 0; --i)
    add(manifest(fmt::format("cart_{:02d}", i)));
  auto all = reg_->list();
  ASSERT_TRUE(all.ok());
  EXPECT_THAT(ids_of(*all), ElementsAre("cart_00", "cart_01", "cart_02", "cart_03", "cart_04"));
}

// ---- persistence ----

TEST_F(RegistryTest, SurvivesReopen) {
  add(make_manifest("persist"), "/p.pt");
  reopen();
  auto e = reg_->get("persist");
  ASSERT_TRUE(e.ok() && e->has_value());
  EXPECT_EQ((*e)->manifest, make_manifest("persist"));
  EXPECT_EQ(*reg_->count(), 1);
  auto v = SqliteDb::open(path_);
  EXPECT_EQ(*read_schema_version(*v), 1);
}

TEST_F(RegistryTest, TwoHandlesOnOneFileSeeEachOther) {
  auto other = CartridgeRegistry::open(path_, fast_options());
  ASSERT_TRUE(other.ok()) << other.status().to_string();
  add(manifest("from_first"));
  EXPECT_TRUE((*other)->get("from_first")->has_value());
  ASSERT_TRUE((*other)->register_cartridge(manifest("from_second"), "").ok());
  EXPECT_EQ(*reg_->count(), 2);
}

TEST_F(RegistryTest, RefusesNewerSchemaVersion) {
  reg_.reset();
  {
    auto db = SqliteDb::open(path_);
    ASSERT_TRUE(db.ok());
    ASSERT_TRUE(db->exec("UPDATE schema_version SET version = 99").ok());
  }
  auto r = CartridgeRegistry::open(path_);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), ErrorCode::kFailedPrecondition);
  EXPECT_THAT(r.status().message(), HasSubstr("schema version 99"));
  EXPECT_THAT(r.status().message(), HasSubstr("supports (1)"));
}

TEST_F(RegistryTest, RefusesMalformedSchemaVersionTable) {
  reg_.reset();
  {
    auto db = SqliteDb::open(path_);
    ASSERT_TRUE(db->exec("INSERT INTO schema_version(version) VALUES (1)").ok());
  }
  auto r = CartridgeRegistry::open(path_);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), ErrorCode::kCorrupt);
  EXPECT_THAT(r.status().message(), HasSubstr("found 2 rows"));
}

TEST(Registry, NotADatabaseGivesSqliteError) {
  TempDir dir;
  testing::write_bytes(dir.file("junk.db"), std::string(4096, 'x'));
  auto r = CartridgeRegistry::open(dir.file("junk.db"));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), ErrorCode::kCorrupt);
  EXPECT_THAT(r.status().message(), HasSubstr("file is not a database"));
}

TEST(Registry, UnopenablePathGivesSqliteError) {
  auto r = CartridgeRegistry::open("/nonexistent-dir/sub/registry.db");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), ErrorCode::kIo);
  EXPECT_THAT(r.status().message(), HasSubstr("unable to open database file"));
  EXPECT_THAT(r.status().message(), HasSubstr("/nonexistent-dir/sub/registry.db"));
}

TEST(Registry, ForeignTableWithSameNameIsReported) {
  TempDir dir;
  {
    auto db = SqliteDb::open(dir.file("other.db"));
    ASSERT_TRUE(db->exec("CREATE TABLE cartridges (id TEXT)").ok());
  }
  auto r = CartridgeRegistry::open(dir.file("other.db"));
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("table cartridges already exists"));
  EXPECT_THAT(r.status().message(), HasSubstr("schema migration to version 1"));
}

TEST_F(RegistryTest, SqlErrorsCarrySqliteText) {
  {
    auto db = SqliteDb::open(path_);
    ASSERT_TRUE(db->exec("DROP TABLE cartridges").ok());
  }
  auto n = reg_->count();
  ASSERT_FALSE(n.ok());
  EXPECT_THAT(n.status().message(), HasSubstr("no such table: cartridges"));
  Status s = reg_->register_cartridge(manifest("x"), "");
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(s.message(), HasSubstr("no such table: cartridges"));
  EXPECT_FALSE(reg_->get("x").ok());
  EXPECT_FALSE(reg_->find_by_label("a", "b").ok());
  EXPECT_FALSE(reg_->unregister("x").ok());
}

TEST_F(RegistryTest, CorruptLabelsInARowAreReported) {
  add(manifest("a", {{"k", "v"}}));
  {
    auto db = SqliteDb::open(path_);
    // Valid JSON but not an object: passes the CHECK, fails our reader.
    ASSERT_TRUE(db->exec("UPDATE cartridges SET labels = '[1]' WHERE cartridge_id = 'a'").ok());
  }
  auto e = reg_->get("a");
  ASSERT_FALSE(e.ok());
  EXPECT_EQ(e.status().code(), ErrorCode::kCorrupt);
  EXPECT_THAT(e.status().message(), HasSubstr("'a'"));
}

// ---- migrations ----

constexpr std::string_view kV1 = "CREATE TABLE t (a INTEGER);";
constexpr std::string_view kV2 = "ALTER TABLE t ADD COLUMN b TEXT DEFAULT 'x';";

TEST(SqliteMigrations, AppliesInOrderAndOnlyOnce) {
  TempDir dir;
  auto db = SqliteDb::open(dir.file("m.db"));
  ASSERT_TRUE(db.ok());
  const std::array<SqliteMigration, 1> v1 = {{{1, kV1}}};
  auto r = migrate_schema(*db, v1);
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_EQ(*r, 1);
  ASSERT_TRUE(db->exec("INSERT INTO t(a) VALUES (7)").ok());

  const std::array<SqliteMigration, 2> v2 = {{{1, kV1}, {2, kV2}}};
  r = migrate_schema(*db, v2);
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_EQ(*r, 2);
  EXPECT_EQ(*db->query_text("SELECT b FROM t WHERE a = 7"), "x");  // data kept, column added
  r = migrate_schema(*db, v2);                                     // nothing left to do
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*r, 2);
  EXPECT_EQ(*read_schema_version(*db), 2);
}

TEST(SqliteMigrations, FailedMigrationRollsBack) {
  TempDir dir;
  auto db = SqliteDb::open(dir.file("m.db"));
  const std::array<SqliteMigration, 2> bad = {
      {{1, kV1}, {2, "CREATE TABLE u (x INTEGER); THIS IS NOT SQL;"}}};
  auto r = migrate_schema(*db, bad);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("schema migration to version 2"));
  EXPECT_THAT(r.status().message(), HasSubstr("syntax error"));
  EXPECT_EQ(*read_schema_version(*db), 1);  // version 1 committed, version 2 not
  EXPECT_EQ(*db->query_int64("SELECT count(*) FROM sqlite_master WHERE name = 'u'"), 0);
}

TEST(SqliteMigrations, NumberingIsChecked) {
  TempDir dir;
  auto db = SqliteDb::open(dir.file("m.db"));
  const std::array<SqliteMigration, 2> gap = {{{1, kV1}, {3, kV2}}};
  auto r = migrate_schema(*db, gap);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), ErrorCode::kInternal);
}

TEST(SqliteMigrations, FreshDatabaseIsVersionZero) {
  TempDir dir;
  auto db = SqliteDb::open(dir.file("m.db"));
  EXPECT_EQ(*read_schema_version(*db), 0);
}

// ---- threads and processes ----

TEST_F(RegistryTest, ManyThreadsRegisterAndRead) {
  constexpr int kThreads = 8, kPerThread = 40;
  std::atomic<int> failures{0};
  std::vector<std::thread> ts;
  for (int t = 0; t < kThreads; ++t) {
    ts.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        const std::string id = fmt::format("t{}_{:03d}", t, i);
        if (!reg_->register_cartridge(manifest(id, {{"thread", std::to_string(t)}}), "").ok()) {
          ++failures;
        }
        auto e = reg_->get(id);
        if (!e.ok() || !e->has_value()) ++failures;
        if (!reg_->count().ok() || !reg_->ids_by_label("thread", std::to_string(t)).ok()) {
          ++failures;
        }
        if (i % 10 == 9 && !reg_->unregister(id).ok()) ++failures;
      }
    });
  }
  for (auto& th : ts)
    th.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(*reg_->count(), kThreads * (kPerThread - kPerThread / 10));
  for (int t = 0; t < kThreads; ++t) {
    EXPECT_EQ(reg_->ids_by_label("thread", std::to_string(t))->size(),
              static_cast<size_t>(kPerThread - kPerThread / 10));
  }
  EXPECT_EQ(*reg_->integrity_check(), "ok");
}

TEST(RegistryCrash, KilledWriterLeavesSoundDatabaseWithCommittedRows) {
  TempDir dir;
  const std::string path = dir.file("crash.db");
  {
    auto r = CartridgeRegistry::open(path);  // schema exists before the child starts
    ASSERT_TRUE(r.ok());
  }
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    // Child: register forever, reporting each committed index.
    ::close(fds[0]);
    auto r = CartridgeRegistry::open(path);
    if (!r.ok()) ::_exit(2);
    for (int32_t i = 0;; ++i) {
      CartridgeManifest m = make_manifest(fmt::format("c{:06d}", i));
      m.source_document = std::string(2000, 'x');  // bigger rows: more pages per commit
      if (!(*r)->register_cartridge(m, "/p").ok()) ::_exit(3);
      if (::write(fds[1], &i, sizeof(i)) != sizeof(i)) ::_exit(4);
    }
  }
  ::close(fds[1]);
  int32_t last = -1, i = 0;
  while (last < 150 && ::read(fds[0], &i, sizeof(i)) == sizeof(i))
    last = i;
  ASSERT_EQ(::kill(pid, SIGKILL), 0);  // most likely mid-transaction
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFSIGNALED(status)) << "child exited on its own with " << WEXITSTATUS(status);
  EXPECT_EQ(WTERMSIG(status), SIGKILL);
  // Drain what the child committed before dying.
  while (::read(fds[0], &i, sizeof(i)) == sizeof(i))
    last = i;
  ::close(fds[0]);
  ASSERT_GE(last, 150);

  auto r = CartridgeRegistry::open(path);
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_EQ(*(*r)->integrity_check(), "ok");
  auto n = (*r)->count();
  ASSERT_TRUE(n.ok());
  EXPECT_GE(*n, last + 1);  // every reported commit is there
  EXPECT_LE(*n, last + 2);  // plus at most the one committed but not reported
  for (int32_t k = 0; k <= last; ++k) {
    auto e = (*r)->get(fmt::format("c{:06d}", k));
    ASSERT_TRUE(e.ok() && e->has_value()) << k;
  }
  // And it keeps working.
  ASSERT_TRUE((*r)->register_cartridge(make_manifest("after"), "").ok());
}

}  // namespace
}  // namespace cartserve
