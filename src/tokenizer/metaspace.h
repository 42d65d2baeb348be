// The Metaspace pre-tokenizer of HF `tokenizers` (SentencePiece-style models:
// Llama 2 / Mistral BPE with byte fallback, Unigram): every ' ' becomes the
// replacement (U+2581 "▁"), the replacement is prepended to a piece that does
// not start with it (prepend_scheme "always"; "first": only to the piece at
// the very start of the text; "never"), and with `split` the piece is cut
// before every replacement character.
#pragma once

#include <memory>
#include <string>

#include "tokenizer/pretokenizer.h"

namespace cartserve {

enum class PrependScheme { kAlways, kFirst, kNever };

std::unique_ptr<PreTokenizer> make_metaspace_pre_tokenizer(std::string replacement,
                                                           PrependScheme scheme, bool split);

}  // namespace cartserve
