// A fake model for scheduler tests. Its "KV" of a position is a hash of the
// whole prefix up to that position (salt, virtual positions, token ids), so
// reading a slot tells whether the block table points at the right content:
// computed here, shared through the prefix cache, or provided by a connector.
// Its next token is a function of the last position's content, so a
// request's output does not depend on batching, chunking or preemption, and
// reference_output() gives it without a scheduler.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "engine/input_batch.h"
#include "engine/kv_connector.h"
#include "engine/scheduler.h"
#include "engine/stop_checker.h"
#include "kv/block_pool.h"

namespace cartserve::testing {

inline uint64_t mix(uint64_t a, uint64_t b) {
  uint64_t x = a ^ (b + 0x9E3779B97F4A7C15ull + (a << 6) + (a >> 2));
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return (x ^ (x >> 31)) | 1;  // never 0 (0 = slot never written)
}

inline uint64_t salt_root(const std::string& salt) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : salt)
    h = mix(h, c);
  return h;
}

// Content of virtual position p of a cartridge prefix.
inline uint64_t virtual_content(uint64_t prev, int32_t p) {
  return mix(prev, 0xC0FFEE00ull + p);
}

// Contents of positions [0, n) for a sequence of `tokens` after `num_virtual` virtual positions.
inline std::vector<uint64_t> contents(const std::string& salt, int32_t num_virtual,
                                      const std::vector<int32_t>& tokens) {
  std::vector<uint64_t> c;
  uint64_t h = salt_root(salt);
  for (int32_t p = 0; p < num_virtual; ++p)
    c.push_back(h = virtual_content(h, p));
  for (int32_t t : tokens)
    c.push_back(h = mix(h, static_cast<uint64_t>(t) + 7));
  return c;
}

inline int32_t next_token(uint64_t content, int32_t vocab) {
  return static_cast<int32_t>((content >> 11) % static_cast<uint64_t>(vocab));
}

// What a request generates without any scheduler (token-level stops only).
inline std::vector<int32_t> reference_output(const Request& r, int32_t vocab,
                                             int32_t max_model_len) {
  Request copy;
  copy.prompt_token_ids = r.prompt_token_ids;
  copy.sampling = r.sampling;
  copy.eos_token_ids = r.eos_token_ids;
  copy.num_virtual_tokens = r.num_virtual_tokens;
  for (;;) {
    const auto c = contents(r.prefix_salt, r.num_virtual_tokens, copy.all_token_ids());
    copy.output_token_ids.push_back(next_token(c.back(), vocab));
    if (check_token_stop(copy, max_model_len).reason != FinishReason::kNone) break;
  }
  return copy.output_token_ids;
}

class FakeModel {
 public:
  FakeModel(Scheduler& s, int32_t vocab)
      : s_(s),
        vocab_(vocab),
        block_size_(s.config().block_size),
        batch_(s.config().block_size),
        kv_(static_cast<size_t>(s.pool().num_blocks() * s.config().block_size), 0) {}

  uint64_t& slot(int32_t block, int32_t offset) {
    return kv_[static_cast<size_t>(block * block_size_ + offset)];
  }

  // Runs one step; returns the sampled tokens. Fails the test (and returns
  // what it has) on any inconsistency.
  std::vector<int32_t> run(const SchedulerOutput& out) {
    for (const auto& c : out.block_copies) {
      EXPECT_GT(c.num_slots, 0);
      EXPECT_LT(c.num_slots, block_size_);
      for (int32_t i = 0; i < c.num_slots; ++i)
        slot(c.dst_block, i) = slot(c.src_block, i);
      ++num_copies_;
    }
    // The runner's block tables, rebuilt from the scheduler's deltas.
    StepInput in;
    StepPlan plan;
    EXPECT_TRUE(
        batch_
            .build(
                out, [&](const std::string& id) { return s_.get_request(id).get(); }, in, plan)
            .ok());
    if (!out.scheduled.empty()) {
      const Status v = validate_step(in, {}, vocab_, s_.pool().num_blocks(), block_size_);
      EXPECT_TRUE(v.ok()) << v.to_string();
    }
    // Shared prefixes (the shared-prefix attention hint) lie in blocks no row
    // of the step writes, and each is held by the pool.
    EXPECT_EQ(in.shared_prefix.size(), out.scheduled.size());
    std::set<int32_t> shared;
    for (size_t q = 0; q < in.shared_prefix.size(); ++q) {
      for (int32_t b = 0; b < in.shared_prefix[q] / block_size_; ++b) {
        const int32_t id =
            in.block_table[q * static_cast<size_t>(in.max_blocks) + static_cast<size_t>(b)];
        EXPECT_GT(s_.pool().ref_count(id), 0);
        shared.insert(id);
      }
    }
    for (int32_t slot_id : in.slot_mapping)
      EXPECT_EQ(shared.count(slot_id / block_size_), 0u) << "a row writes into a shared block";
    std::vector<int32_t> sampled;
    for (const auto& e : out.scheduled) {
      auto r = s_.get_request(e.request_id);
      EXPECT_TRUE(r) << e.request_id;
      if (!r) continue;
      EXPECT_EQ(r->status, RequestStatus::kRunning);
      EXPECT_EQ(e.start_position, r->num_computed_tokens) << e.request_id;
      const std::vector<int32_t>& table = batch_.row(e.request_id);
      EXPECT_EQ(table, r->block_table);
      EXPECT_GE(static_cast<int64_t>(table.size()) * block_size_,
                int64_t{e.start_position} + e.num_tokens);
      EXPECT_GE(e.start_position, r->num_virtual_tokens);
      const auto c = contents(r->prefix_salt, r->num_virtual_tokens, r->all_token_ids());
      EXPECT_EQ(static_cast<int32_t>(c.size()), r->num_positions());
      for (int32_t i = 0; i < e.num_tokens; ++i) {
        EXPECT_EQ(e.token_ids[static_cast<size_t>(i)], r->token_at(e.start_position + i));
      }
      // Everything before the chunk must be in the cache, with the right content.
      for (int32_t p = 0; p < e.start_position; ++p) {
        const uint64_t got = slot(table[static_cast<size_t>(p / block_size_)], p % block_size_);
        if (got != c[static_cast<size_t>(p)]) {
          ADD_FAILURE() << e.request_id << ": wrong KV at position " << p << " (block "
                        << table[static_cast<size_t>(p / block_size_)] << ")";
          break;
        }
      }
      for (int32_t p = e.start_position; p < e.start_position + e.num_tokens; ++p) {
        const int32_t b = table[static_cast<size_t>(p / block_size_)];
        EXPECT_GT(s_.pool().ref_count(b), 0);
        slot(b, p % block_size_) = c[static_cast<size_t>(p)];
      }
      EXPECT_EQ(e.needs_logits, e.start_position + e.num_tokens == r->num_positions());
      if (e.needs_logits) sampled.push_back(next_token(c.back(), vocab_));
      positions_[e.request_id].emplace_back(e.start_position, e.num_tokens);
    }
    return sampled;
  }

  // (start, count) chunks computed per request, in order.
  std::map<std::string, std::vector<std::pair<int32_t, int32_t>>> positions_;
  int num_copies_ = 0;

 private:
  Scheduler& s_;
  int32_t vocab_;
  int32_t block_size_;
  InputBatch batch_;
  std::vector<uint64_t> kv_;  // [num_blocks * block_size] content per slot
};

// Provides a virtual cartridge prefix per cartridge id: `num_tokens`
// positions in blocks it allocates from the pool and keeps (one reference).
class FakeCartridgeConnector : public KvConnector {
 public:
  struct Cartridge {
    int32_t num_tokens = 0;
    std::vector<int32_t> blocks;
  };
  FakeCartridgeConnector(BlockPool& pool, int32_t block_size)
      : pool_(pool), block_size_(block_size) {}

  // Allocates and fills the cartridge's blocks (salt = id).
  void add(const std::string& id, int32_t num_tokens, FakeModel& model) {
    Cartridge c;
    c.num_tokens = num_tokens;
    auto b = pool_.allocate((num_tokens + block_size_ - 1) / block_size_);
    ASSERT_TRUE(b);
    c.blocks = *b;
    const auto content = contents(id, num_tokens, {});
    for (int32_t p = 0; p < num_tokens; ++p) {
      model.slot(c.blocks[static_cast<size_t>(p / block_size_)], p % block_size_) =
          content[static_cast<size_t>(p)];
    }
    carts_[id] = c;
  }

  Result<int32_t> get_num_matched_tokens(const Request& r) override {
    if (r.cartridge_ids.empty()) return 0;
    const auto it = carts_.find(r.cartridge_ids[0]);
    if (it == carts_.end()) {
      return make_error(ErrorCode::kNotFound, "unknown cartridge '{}'", r.cartridge_ids[0]);
    }
    return it->second.num_tokens;
  }
  Result<std::vector<int32_t>> get_blocks(const Request& r, int32_t n) override {
    if (!ready) return make_error(ErrorCode::kResourceExhausted, "no room yet");
    if (loading) return make_error(ErrorCode::kUnavailable, "being loaded");
    const Cartridge& c = carts_.at(r.cartridge_ids[0]);
    EXPECT_EQ(n, c.num_tokens);
    return c.blocks;
  }
  void on_blocks_allocated(const Request& r) override { ++allocated[r.id]; }
  void on_request_preempted(const Request& r) override { ++preempted[r.id]; }
  void on_request_finished(const Request& r) override { ++finished[r.id]; }

  // Blocks it holds one reference to.
  std::map<int32_t, int> held() const {
    std::map<int32_t, int> h;
    for (const auto& [id, c] : carts_) {
      for (int32_t b : c.blocks)
        ++h[b];
    }
    return h;
  }

  bool ready = true;     // false: "no room now" (the request waits at the queue's head)
  bool loading = false;  // true: "being loaded" (the request waits for its KV aside)
  std::map<std::string, int> allocated, preempted, finished;
  std::map<std::string, Cartridge> carts_;

 private:
  BlockPool& pool_;
  int32_t block_size_;
};

}  // namespace cartserve::testing
