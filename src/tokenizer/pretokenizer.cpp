#include "tokenizer/pretokenizer.h"

#include <algorithm>
#include <optional>

#include "tokenizer/unicode_props.h"
#include "tokenizer/utf8.h"

namespace cartserve {

const char* const kGpt2SplitPattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

namespace {

// A contiguous part of a piece and whether the pattern matched it.
struct Span {
  size_t begin, end;
  bool match;
};

// Turns matches into spans that cover the whole piece (HF Pattern::find_matches).
void cover(size_t size, const std::vector<MatchSpan>& matches, bool invert,
           std::vector<Span>& spans) {
  spans.clear();
  size_t prev = 0;
  for (const MatchSpan& m : matches) {
    if (prev != m.begin) spans.push_back({prev, m.begin, invert});
    spans.push_back({m.begin, m.end, !invert});
    prev = m.end;
  }
  if (prev != size) spans.push_back({prev, size, invert});
}

// HF NormalizedString::split: groups spans per behaviour, drops removed and
// empty ones, and appends the pieces to `out`.
void emit(std::string_view piece, const std::vector<Span>& spans, SplitBehavior behavior,
          std::vector<std::string_view>& out) {
  struct Part {
    size_t begin, end;
    bool remove;
  };
  std::vector<Part> parts;
  parts.reserve(spans.size());
  switch (behavior) {
    case SplitBehavior::kIsolated:
      for (const Span& s : spans)
        parts.push_back({s.begin, s.end, false});
      break;
    case SplitBehavior::kRemoved:
      for (const Span& s : spans)
        parts.push_back({s.begin, s.end, s.match});
      break;
    case SplitBehavior::kContiguous: {
      bool prev_match = false;
      for (const Span& s : spans) {
        if (s.match == prev_match && !parts.empty()) {
          parts.back().end = s.end;
        } else {
          parts.push_back({s.begin, s.end, false});
        }
        prev_match = s.match;
      }
      break;
    }
    case SplitBehavior::kMergedWithPrevious: {
      bool prev_match = false;
      for (const Span& s : spans) {
        if (s.match && !prev_match && !parts.empty()) {
          parts.back().end = s.end;
        } else {
          parts.push_back({s.begin, s.end, false});
        }
        prev_match = s.match;
      }
      break;
    }
    case SplitBehavior::kMergedWithNext: {
      bool prev_match = false;  // "previous" in reverse order: the span to the right
      for (auto it = spans.rbegin(); it != spans.rend(); ++it) {
        if (it->match && !prev_match && !parts.empty()) {
          parts.back().begin = it->begin;
        } else {
          parts.push_back({it->begin, it->end, false});
        }
        prev_match = it->match;
      }
      std::reverse(parts.begin(), parts.end());
      break;
    }
  }
  for (const Part& p : parts) {
    if (!p.remove && p.end > p.begin) out.push_back(piece.substr(p.begin, p.end - p.begin));
  }
}

class SplitPreTokenizer final : public PreTokenizer {
 public:
  SplitPreTokenizer(Regex regex, SplitBehavior behavior, bool invert)
      : regex_(std::move(regex)), behavior_(behavior), invert_(invert) {}

  void split(PieceList& list) const override {
    std::vector<std::string_view> out;
    out.reserve(list.pieces.size() * 4);
    std::vector<MatchSpan> matches;
    std::vector<Span> spans;
    for (std::string_view piece : list.pieces) {
      matches.clear();
      regex_.find_all(piece, matches);
      cover(piece.size(), matches, invert_, spans);
      emit(piece, spans, behavior_, out);
    }
    list.pieces = std::move(out);
  }

 private:
  Regex regex_;
  SplitBehavior behavior_;
  bool invert_;
};

// Digits: each numeric character is a match (HF's char-predicate pattern);
// Isolated when individual_digits, else Contiguous.
class DigitsPreTokenizer final : public PreTokenizer {
 public:
  explicit DigitsPreTokenizer(bool individual) : individual_(individual) {}

  void split(PieceList& list) const override {
    std::vector<std::string_view> out;
    out.reserve(list.pieces.size() * 2);
    std::vector<MatchSpan> matches;
    std::vector<Span> spans;
    for (std::string_view piece : list.pieces) {
      matches.clear();
      size_t i = 0;
      while (i < piece.size()) {
        const utf8::Decoded d = utf8::decode(piece, i);
        const size_t len = static_cast<size_t>(d.len > 0 ? d.len : -d.len);
        if (d.len > 0 && unicode::is_numeric(d.cp)) matches.push_back({i, i + len});
        i += len;
      }
      cover(piece.size(), matches, false, spans);
      emit(piece, spans, individual_ ? SplitBehavior::kIsolated : SplitBehavior::kContiguous, out);
    }
    list.pieces = std::move(out);
  }

 private:
  bool individual_;
};

class ByteLevelPreTokenizer final : public PreTokenizer {
 public:
  ByteLevelPreTokenizer(bool add_prefix_space, std::optional<Regex> regex)
      : add_prefix_space_(add_prefix_space), regex_(std::move(regex)) {}

  void split(PieceList& list) const override {
    if (add_prefix_space_) {
      for (std::string_view& piece : list.pieces) {
        if (piece.empty() || piece.front() != ' ') {
          std::string s;
          s.reserve(piece.size() + 1);
          s.push_back(' ');
          s.append(piece);
          piece = list.own(std::move(s));
        }
      }
    }
    if (!regex_) return;
    std::vector<std::string_view> out;
    out.reserve(list.pieces.size() * 4);
    std::vector<MatchSpan> matches;
    std::vector<Span> spans;
    for (std::string_view piece : list.pieces) {
      matches.clear();
      regex_->find_all(piece, matches);
      cover(piece.size(), matches, false, spans);
      emit(piece, spans, SplitBehavior::kIsolated, out);
    }
    list.pieces = std::move(out);
  }
  bool ends_with_byte_level() const override { return true; }

 private:
  bool add_prefix_space_;
  std::optional<Regex> regex_;
};

class SequencePreTokenizer final : public PreTokenizer {
 public:
  explicit SequencePreTokenizer(std::vector<std::unique_ptr<PreTokenizer>> steps)
      : steps_(std::move(steps)) {}

  void split(PieceList& list) const override {
    for (const auto& s : steps_)
      s->split(list);
  }
  bool ends_with_byte_level() const override {
    return !steps_.empty() && steps_.back()->ends_with_byte_level();
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> steps_;
};

}  // namespace

std::unique_ptr<PreTokenizer> make_split_pre_tokenizer(Regex regex, SplitBehavior behavior,
                                                       bool invert) {
  return std::make_unique<SplitPreTokenizer>(std::move(regex), behavior, invert);
}

std::unique_ptr<PreTokenizer> make_digits_pre_tokenizer(bool individual_digits) {
  return std::make_unique<DigitsPreTokenizer>(individual_digits);
}

Result<std::unique_ptr<PreTokenizer>> make_byte_level_pre_tokenizer(bool add_prefix_space,
                                                                    bool use_regex) {
  std::optional<Regex> regex;
  if (use_regex) {
    CS_ASSIGN_OR_RETURN(regex, Regex::compile(kGpt2SplitPattern));
  }
  return std::unique_ptr<PreTokenizer>(
      std::make_unique<ByteLevelPreTokenizer>(add_prefix_space, std::move(regex)));
}

std::unique_ptr<PreTokenizer> make_sequence_pre_tokenizer(
    std::vector<std::unique_ptr<PreTokenizer>> steps) {
  return std::make_unique<SequencePreTokenizer>(std::move(steps));
}

}  // namespace cartserve
