#include "model/weights.h"

namespace cartserve {

size_t ModelWeights::nbytes() const {
  size_t n = embed.nbytes() + final_norm.nbytes();
  if (lm_head.raw() != embed.raw()) n += lm_head.nbytes();
  for (const auto& l : layers) {
    for (const Tensor* t : {&l.attn_norm, &l.wq, &l.wk, &l.wv, &l.wo, &l.bq, &l.bk, &l.bv,
                            &l.q_norm, &l.k_norm, &l.ffn_norm, &l.w_gate, &l.w_up, &l.w_down}) {
      n += t->nbytes();
    }
  }
  return n;
}

}  // namespace cartserve
