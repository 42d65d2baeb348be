#include "tokenizer/unigram.h"

#include <algorithm>
#include <limits>

#include <fmt/format.h>

#include "tokenizer/utf8.h"

namespace cartserve {
namespace {

constexpr double kUnkPenalty = 10.0;  // SentencePiece's and HF's

}  // namespace

int32_t UnigramModel::child(int32_t node, uint8_t b) const {
  auto it = edges_.find((static_cast<uint64_t>(node) << 8) | b);
  return it == edges_.end() ? -1 : it->second;
}

Result<UnigramModel> UnigramModel::create(UnigramSpec spec) {
  if (spec.pieces.empty()) return make_error(ErrorCode::kCorrupt, "Unigram: empty vocabulary");
  const auto n = static_cast<int32_t>(spec.pieces.size());
  if (spec.unk_id && (*spec.unk_id < 0 || *spec.unk_id >= n)) {
    return make_error(ErrorCode::kCorrupt, "Unigram: unk_id {} is outside the vocabulary (size {})",
                      *spec.unk_id, n);
  }
  UnigramModel m;
  m.unk_id_ = spec.unk_id;
  m.byte_fallback_ = spec.byte_fallback;
  m.nodes_.emplace_back();
  double min_score = std::numeric_limits<double>::infinity();
  m.scores_.reserve(spec.pieces.size());
  for (int32_t id = 0; id < n; ++id) {
    const auto& [text, score] = spec.pieces[id];
    m.scores_.push_back(score);
    min_score = std::min(min_score, score);
    m.vocab_[text] = id;
    int32_t node = 0;
    for (char c : text) {
      const uint64_t key = (static_cast<uint64_t>(node) << 8) | static_cast<uint8_t>(c);
      auto it = m.edges_.find(key);
      if (it == m.edges_.end()) {
        it = m.edges_.emplace(key, static_cast<int32_t>(m.nodes_.size())).first;
        m.nodes_.emplace_back();
      }
      node = it->second;
    }
    if (node != 0) m.nodes_[node].token = 0;  // marks "a piece ends here"; id looked up below
  }
  // The id of a piece found in the trie is its vocab_ id (the last of repeats).
  for (const auto& [text, id] : m.vocab_) {
    int32_t node = 0;
    for (char c : text)
      node = m.child(node, static_cast<uint8_t>(c));
    if (node > 0) m.nodes_[node].token = id;
  }
  m.unk_score_ = min_score - kUnkPenalty;
  for (int b = 0; b < 256; ++b) {
    auto it = m.vocab_.find(fmt::format("<0x{:02X}>", b));
    m.byte_ids_[b] = it == m.vocab_.end() ? -1 : it->second;
  }
  return m;
}

void UnigramModel::encode_piece(std::string_view text, std::vector<int32_t>& out) const {
  if (text.empty()) return;
  struct Best {
    int32_t id = -1;
    double score = 0.0;
    int64_t start = -1;  // -1: not reached yet
  };
  const size_t size = text.size();
  std::vector<Best> best(size + 1);  // [byte offset] best path ending there
  best[0].start = 0;
  for (size_t start = 0; start < size;) {
    const double base = best[start].score;
    const size_t char_len =
        std::min(utf8::seq_len(static_cast<uint8_t>(text[start])), size - start);
    bool has_single_char = false;
    int32_t node = 0;
    for (size_t end = start; end < size; ++end) {
      node = child(node, static_cast<uint8_t>(text[end]));
      if (node < 0) break;
      const int32_t id = nodes_[node].token;
      if (id < 0) continue;
      const size_t stop = end + 1;
      const double cand = base + scores_[id];
      Best& t = best[stop];
      if (t.start < 0 || cand > t.score) t = Best{id, cand, static_cast<int64_t>(start)};
      if (stop - start == char_len) has_single_char = true;
    }
    if (!has_single_char) {
      Best& t = best[start + char_len];
      const double cand = base + unk_score_;
      if (t.start < 0 || cand > t.score)
        t = Best{unk_id_.value_or(-1), cand, static_cast<int64_t>(start)};
    }
    start += char_len;
  }
  // Back from the end: pieces, with runs of unk fused into one piece.
  std::vector<std::pair<size_t, size_t>> spans;  // [begin, end) in reverse order
  std::vector<bool> fused;
  for (size_t end = size; end > 0;) {
    const Best& b = best[end];
    const auto begin = static_cast<size_t>(b.start);
    const bool is_unk = unk_id_ && b.id == *unk_id_;
    if (is_unk && !fused.empty() && fused.back() && spans.back().first == end) {
      spans.back().first = begin;
    } else {
      spans.emplace_back(begin, end);
      fused.push_back(is_unk);
    }
    end = begin;
  }
  for (size_t k = spans.size(); k-- > 0;) {
    const std::string_view piece = text.substr(spans[k].first, spans[k].second - spans[k].first);
    if (auto it = vocab_.find(piece); it != vocab_.end()) {
      out.push_back(it->second);
      continue;
    }
    bool all_bytes = byte_fallback_;
    for (size_t i = 0; all_bytes && i < piece.size(); ++i)
      all_bytes = byte_ids_[static_cast<uint8_t>(piece[i])] >= 0;
    if (all_bytes) {
      for (char c : piece)
        out.push_back(byte_ids_[static_cast<uint8_t>(c)]);
    } else if (unk_id_) {
      out.push_back(*unk_id_);
    }
  }
}

}  // namespace cartserve
