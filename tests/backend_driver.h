// Drives one sequence straight through a Backend (no engine, no scheduler):
// prefill in chunks, then token by token, over blocks 1, 2, 3, ... of the
// backend's KV cache. For tests that compare logits at every position with
// a reference (golden tests on the CPU and on the GPU).
#pragma once

#include <algorithm>
#include <span>
#include <vector>

#include "runtime/backend.h"

namespace cartserve::testing {

class BackendDriver {
 public:
  explicit BackendDriver(Backend& backend) : backend_(backend) {}

  // Appends `tokens` in chunks of at most `chunk` rows; returns the logits of
  // every row when `all_logits`, else of the last one: [rows, vocab].
  Result<std::vector<float>> append(std::span<const int32_t> tokens, bool all_logits = false,
                                    int chunk = 512) {
    const KvSpec& kv = backend_.kv_spec();
    const int32_t B = kv.block_size;
    std::vector<float> out, logits;
    size_t done = 0;
    while (done < tokens.size()) {
      const int n =
          static_cast<int>(std::min<size_t>(static_cast<size_t>(chunk), tokens.size() - done));
      const int32_t kv_len = length_ + n;
      if ((kv_len + B - 1) / B > kv.num_blocks - 1) {
        return make_error(ErrorCode::kOutOfRange, "{} positions exceed the backend's KV cache",
                          kv_len);
      }
      StepInput in;
      in.max_blocks = (kv_len + B - 1) / B;
      while (static_cast<int32_t>(table_.size()) < in.max_blocks)
        table_.push_back(static_cast<int32_t>(table_.size()) + 1);  // block 0 is the null block
      in.append_sequence(table_, B, length_, tokens.subspan(done, static_cast<size_t>(n)));
      const bool last_chunk = done + static_cast<size_t>(n) == tokens.size();
      for (int i = 0; i < n; ++i) {
        if (all_logits || (last_chunk && i == n - 1)) {
          SampleRow r;
          r.row = i;
          in.samples.push_back(r);
        }
      }
      CS_RETURN_IF_ERROR(backend_.logits(in, logits));
      out.insert(out.end(), logits.begin(), logits.end());
      length_ = kv_len;
      done += static_cast<size_t>(n);
    }
    return out;
  }

  void reset() { length_ = 0; }
  int length() const { return length_; }

 private:
  Backend& backend_;
  std::vector<int32_t> table_;  // 1, 2, 3, ...
  int length_ = 0;
};

}  // namespace cartserve::testing
