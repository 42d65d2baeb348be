// Decoders of tokenizer.json for SentencePiece-style models: a chain of
// Replace (one character -> text), ByteFallback ("<0xNN>" tokens back into
// bytes), Fuse, Strip (leading characters of the output) and Metaspace ("▁"
// back into spaces), run as HF `tokenizers` runs decode_chain. Byte-level
// models use byte_level.h instead.
//
// NOTE: the chain runs token by token (DecodeState), which is what makes
// streaming possible; it is exact for the chains accepted by
// SpmDecoder::create: one-character Replace patterns (they commute with
// Fuse), Strip only after Fuse and with stop 0, Metaspace only as the first
// step. A run of byte tokens decodes, as in HF, to its UTF-8 text when the
// whole run is valid and to one U+FFFD per byte otherwise.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"

namespace cartserve {

struct DecoderStep {
  enum class Kind { kReplace, kByteFallback, kFuse, kStrip, kMetaspace };
  Kind kind = Kind::kFuse;
  std::string pattern;  // kReplace: one character; kStrip/kMetaspace: the character
  std::string content;  // kReplace: its replacement
  size_t start = 0;     // kStrip: how many leading `pattern` characters at most
  bool prepend = true;  // kMetaspace: prepend_scheme != "never"
};

class SpmDecoder {
 public:
  // kUnsupported (naming the step) for a chain that cannot run exactly token by token.
  static Result<SpmDecoder> create(std::vector<DecoderStep> steps);

  // The byte a "<0xNN>" token stands for when the chain has ByteFallback.
  std::optional<uint8_t> byte_of(std::string_view token) const;
  // What one token stands for in the middle of a text (not the first token,
  // nothing stripped); a byte token's single byte.
  std::string token_text(std::string_view token) const;

 private:
  friend class DecodeState;
  std::vector<DecoderStep> before_;  // steps on each token, up to ByteFallback
  std::vector<DecoderStep> after_;   // steps on each emitted chunk, after ByteFallback
  bool byte_fallback_ = false;
};

// Incremental decoding: tokens in, text out.
class DecodeState {
 public:
  // at_text_start: the first token pushed starts the text (Strip and the
  // Metaspace first-token rule apply), as for decode(); false for text that
  // continues a prompt. eager: emit the characters of a byte run as soon as
  // they are complete (streaming) instead of at its end; the output is the
  // same unless the run holds invalid UTF-8.
  DecodeState(const SpmDecoder& dec, bool at_text_start, bool eager);

  void push(std::string_view token, std::string& out);
  // Ends the text: a byte run still open is decoded.
  void finish(std::string& out);

 private:
  void end_run(std::string& out);
  void emit(std::string chunk, std::string& out);

  const SpmDecoder& dec_;
  bool eager_;
  size_t index_ = 0;       // tokens pushed so far (Metaspace's first-token rule)
  size_t strip_left_ = 0;  // leading characters Strip may still remove
  std::string run_;        // bytes of the open byte run not yet emitted
  size_t run_len_ = 0;     // bytes in the open run (emitted or not)
};

}  // namespace cartserve
