// Merges of a SentencePiece BPE vocabulary that stores scores but no merges
// (GGUF tokenizer.ggml.model "llama"), in the order HF derives them
// (transformers' generate_merges, which its GGUF and slow->fast converters
// use): every split of every piece into two vocabulary pieces, ranked by the
// piece's score (higher first), then by the code-point lengths of the left and
// right parts (longer first); ties keep vocabulary order, and the splits of one
// piece are ordered by (left id, right id).
//
// NOTE: BPE over these ranks is SentencePiece's "merge the best-scored pair"
// rule, so it gives what the model was trained with.
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace cartserve {

std::vector<std::pair<std::string, std::string>> spm_merges_from_scores(
    const std::vector<std::string>& tokens, const std::vector<double>& scores);

}  // namespace cartserve
