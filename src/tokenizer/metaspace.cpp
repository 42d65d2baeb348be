#include "tokenizer/metaspace.h"

namespace cartserve {
namespace {

class MetaspacePreTokenizer final : public PreTokenizer {
 public:
  MetaspacePreTokenizer(std::string replacement, PrependScheme scheme, bool split)
      : rep_(std::move(replacement)), scheme_(scheme), split_(split) {}

  void split(PieceList& list) const override {
    std::vector<std::string_view> out;
    out.reserve(list.pieces.size());
    for (size_t i = 0; i < list.pieces.size(); ++i) {
      const std::string_view piece = list.pieces[i];
      std::string s;
      s.reserve(piece.size() + rep_.size());
      for (char c : piece) {
        if (c == ' ') {
          s += rep_;
        } else {
          s.push_back(c);
        }
      }
      const bool starts_with_rep = s.compare(0, rep_.size(), rep_) == 0;
      const bool prepend = scheme_ == PrependScheme::kAlways ||
                           (scheme_ == PrependScheme::kFirst && i == 0 && list.at_text_start);
      if (prepend && !starts_with_rep) s.insert(0, rep_);
      const std::string_view owned = list.own(std::move(s));
      if (owned.empty()) continue;  // empty pieces vanish
      if (!split_) {
        out.push_back(owned);
        continue;
      }
      // Split MergedWithNext on the replacement: each one starts a new piece.
      size_t begin = 0;
      for (size_t hit = owned.find(rep_, 1); hit != std::string_view::npos;
           hit = owned.find(rep_, hit + rep_.size())) {
        if (hit > begin) out.push_back(owned.substr(begin, hit - begin));
        begin = hit;
      }
      if (begin < owned.size()) out.push_back(owned.substr(begin));
    }
    list.pieces = std::move(out);
  }

 private:
  std::string rep_;  // UTF-8 of the replacement character
  PrependScheme scheme_;
  bool split_;
};

}  // namespace

std::unique_ptr<PreTokenizer> make_metaspace_pre_tokenizer(std::string replacement,
                                                           PrependScheme scheme, bool split) {
  return std::make_unique<MetaspacePreTokenizer>(std::move(replacement), scheme, split);
}

}  // namespace cartserve
