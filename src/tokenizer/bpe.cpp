#include "tokenizer/bpe.h"

#include <algorithm>
#include <mutex>

#include <fmt/format.h>

#include "tokenizer/byte_level.h"
#include "tokenizer/utf8.h"

namespace cartserve {
namespace {

constexpr size_t kMaxCachedPiece = 256;  // bytes; HF caches words shorter than 256
constexpr size_t kCacheCapacity = 1 << 15;
constexpr std::string_view kMeta = "\xE2\x96\x81";  // U+2581 "▁"

// Whether `token` holds "▁" right after another character.
bool meta_after_other(std::string_view token) {
  for (size_t hit = token.find(kMeta, 1); hit != std::string_view::npos;
       hit = token.find(kMeta, hit + kMeta.size())) {
    if (hit < kMeta.size() || token.compare(hit - kMeta.size(), kMeta.size(), kMeta) != 0)
      return true;
  }
  return false;
}

uint64_t pair_key(int32_t left, int32_t right) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
}

}  // namespace

// Open-addressing hash table (pair of ids) -> (rank, merged id).
struct BpeModel::MergeTable {
  struct Slot {
    uint64_t key;
    int32_t rank;
    int32_t id;
  };
  static constexpr uint64_t kEmpty = ~uint64_t{0};  // ids are >= 0, so never a key
  std::vector<Slot> slots;                          // [capacity], capacity a power of 2
  uint64_t mask = 0;

  explicit MergeTable(size_t n) {
    size_t cap = 16;
    while (cap < 2 * n)
      cap <<= 1;
    slots.assign(cap, Slot{kEmpty, 0, 0});
    mask = cap - 1;
  }
  static uint64_t hash(uint64_t k) {
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdull;
    k ^= k >> 33;
    return k;
  }
  // A repeated pair takes the later rank, as HF's HashMap collect does.
  void put(uint64_t key, int32_t rank, int32_t id) {
    for (uint64_t i = hash(key) & mask;; i = (i + 1) & mask) {
      if (slots[i].key == kEmpty || slots[i].key == key) {
        slots[i] = Slot{key, rank, id};
        return;
      }
    }
  }
  const Slot* find(uint64_t key) const {
    for (uint64_t i = hash(key) & mask;; i = (i + 1) & mask) {
      if (slots[i].key == key) return &slots[i];
      if (slots[i].key == kEmpty) return nullptr;
    }
  }
};

struct BpeModel::Cache {
  std::mutex mu;
  std::unordered_map<std::string, std::vector<int32_t>, StringHash, std::equal_to<>> map;
};

BpeModel::BpeModel() = default;
BpeModel::~BpeModel() = default;
BpeModel::BpeModel(BpeModel&&) noexcept = default;
BpeModel& BpeModel::operator=(BpeModel&&) noexcept = default;

Result<BpeModel> BpeModel::create(VocabMap vocab,
                                  const std::vector<std::pair<std::string, std::string>>& merges,
                                  BpeOptions options) {
  BpeModel m;
  m.options_ = std::move(options);
  if (m.options_.unk_token) {
    auto it = vocab.find(*m.options_.unk_token);
    if (it == vocab.end()) {
      return make_error(ErrorCode::kCorrupt, "unk_token '{}' is not in the vocabulary",
                        *m.options_.unk_token);
    }
    m.unk_id_ = it->second;
  }
  for (int b = 0; b < 256; ++b) {
    auto it =
        vocab.find(m.options_.byte_level ? byte_level::encode(std::string(1, static_cast<char>(b)))
                                         : fmt::format("<0x{:02X}>", b));
    m.byte_ids_[b] = it == vocab.end() ? -1 : it->second;
  }
  m.merges_ = std::make_unique<MergeTable>(merges.size());
  std::string joined;
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const auto& [a, b] = merges[rank];
    auto ia = vocab.find(a), ib = vocab.find(b);
    joined = a + b;
    auto ij = vocab.find(joined);
    if (ia == vocab.end() || ib == vocab.end() || ij == vocab.end()) {
      const std::string& missing = ia == vocab.end() ? a : ib == vocab.end() ? b : joined;
      return make_error(ErrorCode::kCorrupt,
                        "merge {} ('{}' + '{}'): token '{}' is not in the vocabulary", rank, a, b,
                        missing);
    }
    m.merges_->put(pair_key(ia->second, ib->second), static_cast<int32_t>(rank), ij->second);
  }
  m.merge_count_ = merges.size();
  if (!m.options_.byte_level) {
    m.split_words_ = true;
    for (const auto& [text, id] : vocab) {
      if (meta_after_other(text)) {
        m.split_words_ = false;
        break;
      }
    }
  }
  m.vocab_ = std::move(vocab);
  m.cache_ = std::make_unique<Cache>();
  return m;
}

void BpeModel::merge(std::string_view bytes, std::vector<int32_t>& out) const {
  struct Sym {
    int32_t id;
    int32_t prev, next;  // linked list over live symbols; -1 at the ends
    bool dead;
  };
  struct Entry {
    int32_t rank, pos, new_id;
  };
  thread_local std::vector<Sym> syms;    // [n_symbols]
  thread_local std::vector<Entry> heap;  // candidate merges, min-heap on (rank, pos)
  syms.clear();
  heap.clear();

  // Initial symbols, as HF's merge_word. Byte-level: one per byte. Otherwise
  // one per character; a character missing from the vocabulary becomes the
  // <0xNN> tokens of its bytes when byte_fallback has them all, else unk.
  // Unknown symbols become unk (fused when fuse_unk) or vanish when there is
  // no unk token. As in HF, byte-fallback symbols do not flush a pending unk
  // (it lands after them); only a vocabulary symbol does.
  bool pending_unk = false;
  auto add = [&](int32_t id) { syms.push_back(Sym{id, 0, 0, false}); };
  auto known = [&](int32_t id) {
    if (pending_unk) add(*unk_id_);
    pending_unk = false;
    add(id);
  };
  auto unknown = [&] {
    if (!unk_id_) return;
    if (pending_unk && !options_.fuse_unk) add(*unk_id_);
    pending_unk = true;
  };
  if (options_.byte_level) {
    for (char c : bytes) {
      const int32_t id = byte_ids_[static_cast<uint8_t>(c)];
      if (id >= 0) {
        known(id);
      } else {
        unknown();
      }
    }
  } else {
    for (size_t i = 0; i < bytes.size();) {
      const size_t len = std::min(utf8::seq_len(static_cast<uint8_t>(bytes[i])), bytes.size() - i);
      const std::string_view ch = bytes.substr(i, len);
      i += len;
      if (auto it = vocab_.find(ch); it != vocab_.end()) {
        known(it->second);
        continue;
      }
      bool all_bytes = options_.byte_fallback;
      for (size_t k = 0; all_bytes && k < ch.size(); ++k)
        all_bytes = byte_ids_[static_cast<uint8_t>(ch[k])] >= 0;
      if (all_bytes) {
        for (char c : ch)
          add(byte_ids_[static_cast<uint8_t>(c)]);
      } else {
        unknown();
      }
    }
  }
  if (pending_unk) add(*unk_id_);
  const auto n = static_cast<int32_t>(syms.size());
  for (int32_t i = 0; i < n; ++i) {
    syms[i].prev = i - 1;
    syms[i].next = i + 1 < n ? i + 1 : -1;
  }

  auto later = [](const Entry& a, const Entry& b) {
    return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos;
  };
  auto push = [&](int32_t pos, int32_t left, int32_t right) {
    if (const MergeTable::Slot* s = merges_->find(pair_key(left, right))) {
      heap.push_back(Entry{s->rank, pos, s->id});
      std::push_heap(heap.begin(), heap.end(), later);
    }
  };
  for (int32_t i = 0; i + 1 < n; ++i) {
    if (const MergeTable::Slot* s = merges_->find(pair_key(syms[i].id, syms[i + 1].id))) {
      heap.push_back(Entry{s->rank, i, s->id});
    }
  }
  std::make_heap(heap.begin(), heap.end(), later);

  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), later);
    const Entry top = heap.back();
    heap.pop_back();
    Sym& left = syms[top.pos];
    if (left.dead || left.next < 0) continue;
    Sym& right = syms[left.next];
    // Stale entry: one side of the pair changed since it was queued.
    const MergeTable::Slot* s = merges_->find(pair_key(left.id, right.id));
    if (s == nullptr || s->id != top.new_id) continue;
    left.id = top.new_id;
    right.dead = true;
    left.next = right.next;
    if (left.next >= 0) syms[left.next].prev = top.pos;
    if (left.prev >= 0) push(left.prev, syms[left.prev].id, left.id);
    if (left.next >= 0) push(top.pos, left.id, syms[left.next].id);
  }
  for (int32_t i = 0; i >= 0 && i < n; i = syms[i].next)
    out.push_back(syms[i].id);
}

void BpeModel::encode_piece(std::string_view bytes, std::vector<int32_t>& out) const {
  if (!split_words_) return encode_word(bytes, out);
  size_t begin = 0;
  for (size_t hit = bytes.find(kMeta, 1); hit != std::string_view::npos;
       hit = bytes.find(kMeta, hit + kMeta.size())) {
    const bool after_meta =
        hit >= kMeta.size() && bytes.compare(hit - kMeta.size(), kMeta.size(), kMeta) == 0;
    if (after_meta) continue;  // a run of "▁" stays with the word it starts
    encode_word(bytes.substr(begin, hit - begin), out);
    begin = hit;
  }
  encode_word(bytes.substr(begin), out);
}

void BpeModel::encode_word(std::string_view bytes, std::vector<int32_t>& out) const {
  if (bytes.empty()) return;
  if (options_.ignore_merges) {
    auto it = options_.byte_level ? vocab_.find(byte_level::encode(bytes)) : vocab_.find(bytes);
    if (it != vocab_.end()) {
      out.push_back(it->second);
      return;
    }
  }
  const bool cacheable = bytes.size() < kMaxCachedPiece;
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_->mu);
    auto it = cache_->map.find(bytes);
    if (it != cache_->map.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  const size_t first = out.size();
  merge(bytes, out);
  if (cacheable) {
    std::vector<int32_t> ids(out.begin() + static_cast<std::ptrdiff_t>(first), out.end());
    std::lock_guard<std::mutex> lock(cache_->mu);
    if (cache_->map.size() >= kCacheCapacity) cache_->map.clear();
    cache_->map.emplace(std::string(bytes), std::move(ids));
  }
}

}  // namespace cartserve
