#include "tokenizer/spm_merges.h"

#include <algorithm>
#include <cstdint>
#include <string_view>
#include <unordered_map>

#include "tokenizer/utf8.h"

namespace cartserve {

std::vector<std::pair<std::string, std::string>> spm_merges_from_scores(
    const std::vector<std::string>& tokens, const std::vector<double>& scores) {
  // token -> id (a repeated token: its last id, as a Python dict built in order).
  std::unordered_map<std::string_view, int32_t> id_of;
  id_of.reserve(tokens.size());
  for (size_t i = 0; i < tokens.size(); ++i)
    id_of[tokens[i]] = static_cast<int32_t>(i);
  // Pieces in first-appearance order with their last score.
  std::vector<size_t> order;  // index of the first appearance
  std::unordered_map<std::string_view, double> score_of;
  for (size_t i = 0; i < tokens.size(); ++i) {
    const double sc = i < scores.size() ? scores[i] : 0.0;
    auto [it, fresh] = score_of.try_emplace(tokens[i], sc);
    if (fresh) {
      order.push_back(i);
    } else {
      it->second = sc;
    }
  }

  struct Cand {
    std::string_view left, right;
    double score;
    int32_t left_len, right_len;  // in code points
  };
  std::vector<Cand> all;
  std::vector<Cand> local;
  std::vector<size_t> cuts;  // byte offsets of the code points of a piece
  for (size_t i : order) {
    const std::string_view piece = tokens[i];
    cuts.clear();
    for (size_t p = 0; p < piece.size();
         p += std::max<size_t>(1, utf8::seq_len(static_cast<uint8_t>(piece[p]))))
      cuts.push_back(p);
    const auto n_cp = static_cast<int32_t>(cuts.size());
    local.clear();
    for (int32_t k = 1; k < n_cp; ++k) {
      const std::string_view l = piece.substr(0, cuts[k]), r = piece.substr(cuts[k]);
      if (id_of.count(l) != 0 && id_of.count(r) != 0)
        local.push_back(Cand{l, r, score_of[piece], k, n_cp - k});
    }
    std::stable_sort(local.begin(), local.end(), [&](const Cand& a, const Cand& b) {
      const int32_t la = id_of[a.left], lb = id_of[b.left];
      return la != lb ? la < lb : id_of[a.right] < id_of[b.right];
    });
    all.insert(all.end(), local.begin(), local.end());
  }
  // Python's sorted(reverse=True) is stable: equal keys keep their order.
  std::stable_sort(all.begin(), all.end(), [](const Cand& a, const Cand& b) {
    if (a.score != b.score) return a.score > b.score;
    if (a.left_len != b.left_len) return a.left_len > b.left_len;
    return a.right_len > b.right_len;
  });
  std::vector<std::pair<std::string, std::string>> out;
  out.reserve(all.size());
  for (const Cand& c : all)
    out.emplace_back(std::string(c.left), std::string(c.right));
  return out;
}

}  // namespace cartserve
