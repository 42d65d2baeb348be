#include "model/sequence_runner.h"

#include <numeric>

namespace cartserve {

SequenceRunner::SequenceRunner(const Model& model, int max_tokens, int block_size)
    : forward_(model),
      block_size_(block_size),
      capacity_(((max_tokens + block_size - 1) / block_size) * block_size),
      cache_(model.config.num_layers, capacity_ / block_size, block_size, model.config.kv_dim()),
      block_table_(static_cast<size_t>(capacity_ / block_size)) {
  std::iota(block_table_.begin(), block_table_.end(), 0);
}

Result<std::vector<float>> SequenceRunner::append(std::span<const int32_t> tokens, bool all_logits,
                                                  int chunk) {
  if (length_ + static_cast<int>(tokens.size()) > capacity_) {
    return make_error(ErrorCode::kOutOfRange, "sequence of {} tokens exceeds the capacity {}",
                      length_ + tokens.size(), capacity_);
  }
  std::vector<float> out;
  std::vector<float> logits;
  size_t done = 0;
  while (done < tokens.size()) {
    const int n =
        static_cast<int>(std::min<size_t>(static_cast<size_t>(chunk), tokens.size() - done));
    ForwardBatch b;
    b.tokens.assign(tokens.begin() + static_cast<ptrdiff_t>(done),
                    tokens.begin() + static_cast<ptrdiff_t>(done) + n);
    for (int i = 0; i < n; ++i) {
      b.positions.push_back(length_ + i);
      b.slots.push_back(slot(length_ + i));
    }
    ops::AttnSeq s;
    s.q_start = 0;
    s.q_len = n;
    s.kv_len = length_ + n;
    s.block_table = block_table_.data();
    s.n_blocks = (length_ + n + block_size_ - 1) / block_size_;
    b.seqs.push_back(s);
    const bool last_chunk = done + static_cast<size_t>(n) == tokens.size();
    if (all_logits) {
      for (int i = 0; i < n; ++i)
        b.logit_rows.push_back(i);
    } else if (last_chunk) {
      b.logit_rows.push_back(n - 1);
    }
    CS_RETURN_IF_ERROR(forward_.forward(b, cache_, logits));
    out.insert(out.end(), logits.begin(), logits.end());
    length_ += n;
    done += static_cast<size_t>(n);
  }
  return out;
}

}  // namespace cartserve
