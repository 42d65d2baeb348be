#define PCRE2_CODE_UNIT_WIDTH 8
#include "tokenizer/regex.h"

#include <pcre2.h>

#include <cctype>

#include "core/logging.h"
#include "tokenizer/utf8.h"

namespace cartserve {

struct Regex::Code {
  pcre2_code* code = nullptr;
  bool jit = false;
  ~Code() { pcre2_code_free(code); }
};

namespace {

// PCRE2's \s (with UCP) is \p{Z} plus \h and \v, which takes in U+180E; the
// Oniguruma regexes of HF `tokenizers` use the White_Space property. \s and \S
// (inside or outside a class) become that property. Escaped backslashes and
// \Q...\E quotes are copied as they are.
std::string onig_compatible(std::string_view p) {
  std::string out;
  out.reserve(p.size() + 32);
  for (size_t i = 0; i < p.size(); ++i) {
    if (p[i] != '\\' || i + 1 >= p.size()) {
      out.push_back(p[i]);
      continue;
    }
    const char c = p[i + 1];
    if (c == 'Q') {
      const size_t end = p.find("\\E", i + 2);
      const size_t stop = end == std::string_view::npos ? p.size() : end + 2;
      out.append(p.substr(i, stop - i));
      i = stop - 1;
      continue;
    }
    if (c == 's') {
      out += "\\p{White_Space}";
    } else if (c == 'S') {
      out += "\\P{White_Space}";
    } else {
      out.push_back('\\');
      out.push_back(c);
    }
    ++i;
  }
  return out;
}

}  // namespace

Result<Regex> Regex::compile(std::string_view pattern) {
  int err = 0;
  PCRE2_SIZE err_offset = 0;
  const std::string translated = onig_compatible(pattern);
  pcre2_code* code =
      pcre2_compile(reinterpret_cast<PCRE2_SPTR>(translated.data()), translated.size(),
                    PCRE2_UTF | PCRE2_UCP, &err, &err_offset, nullptr);
  if (code == nullptr) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(err, msg, sizeof(msg));
    return make_error(ErrorCode::kInvalidArgument, "bad split regex '{}' at offset {}: {}", pattern,
                      err_offset, reinterpret_cast<const char*>(msg));
  }
  auto c = std::make_shared<Code>();
  c->code = code;
  c->jit = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
  Regex r;
  r.code_ = std::move(c);
  r.pattern_ = std::string(pattern);
  return r;
}

Result<Regex> Regex::literal(std::string_view literal) {
  // Escape ASCII punctuation; other characters stand for themselves.
  std::string p;
  for (char c : literal) {
    const auto u = static_cast<unsigned char>(c);
    if (u < 0x80 && !std::isalnum(u)) p.push_back('\\');
    p.push_back(c);
  }
  return compile(p);
}

void Regex::find_all(std::string_view subject, std::vector<MatchSpan>& out) const {
  if (!code_ || subject.empty()) return;
  pcre2_match_data* md = pcre2_match_data_create_from_pattern(code_->code, nullptr);
  if (md == nullptr) return;
  const auto* s = reinterpret_cast<PCRE2_SPTR>(subject.data());
  size_t pos = 0;
  while (pos < subject.size()) {
    int rc = code_->jit ? pcre2_jit_match(code_->code, s, subject.size(), pos, 0, md, nullptr)
                        : PCRE2_ERROR_JIT_BADOPTION;
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT || rc == PCRE2_ERROR_JIT_BADOPTION) {
      // The interpreter keeps its backtracking frames on the heap.
      rc = pcre2_match(code_->code, s, subject.size(), pos, PCRE2_NO_UTF_CHECK, md, nullptr);
    }
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      // Resource limits only (the subject is valid UTF-8): the rest stays one
      // unmatched piece, which the split behaviours handle like any gap.
      LOG_WARN("tokenizer: regex match failed with PCRE2 error {} at byte {}", rc, pos);
      break;
    }
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
    const size_t b = ov[0], e = ov[1];
    if (e > b) {
      out.push_back({b, e});
      pos = e;
    } else {
      if (b >= subject.size()) break;
      pos = b + utf8::seq_len(static_cast<uint8_t>(subject[b]));
    }
  }
  pcre2_match_data_free(md);
}

}  // namespace cartserve
