// The on-device token sampler: the CUDA twin of the CPU Sampler
// (runtime/cpu/sampler.h), giving the same token for the same logits,
// parameters, seed and draw index. Only token ids (and the logprobs a row
// asks for) leave the device.
//
// NOTE: what a row does, in the CPU sampler's order:
//   1. raw logprobs (when num_logprobs >= 0): log-softmax of the logits as
//      given, the chosen token's rank and the top-n (best first, ties by id);
//   2. the row's token edits (min_tokens mask, repetition, frequency and
//      presence penalties), applied in place and undone before the op ends;
//   3. greedy (temperature < 1e-5): argmax, ties to the lowest id; else
//      temperature, min_p and top_k (one threshold on the logits), top_p, and
//      one draw of Sampler::uniform(seed, draw_index).
// A row whose logits hold a NaN or +inf gets token -1 (the CPU sampler fails
// such a row) and NaN logprobs.
//
// Conventions (as in cuda_ops.h): device pointers, one launch on the given
// stream, no allocation and no host synchronisation (capturable in a CUDA
// graph), no float atomics; the same inputs give the same bits.
#pragma once

#ifdef CARTSERVE_WITH_CUDA

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <vector>

namespace cartserve::ops::cuda {

// Width of the top-logprob outputs: out_top_* are [n_rows, kMaxTopLogprobs].
constexpr int kMaxTopLogprobs = 20;

// Sampling parameters of one row (POD, uploaded as a flat array).
struct SampleRowParams {
  float temperature = 1.0f;  // < 1e-5: greedy
  int32_t top_k = 0;         // <= 0 or >= vocab: off
  float top_p = 1.0f;        // 1: off; else in (0, 1)
  float min_p = 0.0f;        // 0: off
  // std::log(min_p) computed on the host as a float (the CPU sampler's exact
  // value; the device logf may differ in the last bit). Unused when min_p == 0.
  float log_min_p = 0.0f;
  float repetition_penalty = 1.0f;  // used by edits with kEditRepetition
  float presence_penalty = 0.0f;    // used by edits with output_count > 0
  float frequency_penalty = 0.0f;   // used by edits with output_count > 0
  uint64_t seed = 0;
  uint64_t draw_index = 0;    // the CPU's row.output_token_ids.size()
  int32_t num_logprobs = -1;  // -1: none; 0: chosen token only; n in [1, 20]: plus top n
  int32_t edit_begin = 0;     // this row's edits: edits[edit_begin, edit_end)
  int32_t edit_end = 0;
};

// What a token edit does (flags of TokenEdit).
enum : uint32_t {
  kEditRepetition = 1u,  // token in prompt or output: repetition penalty
  kEditMask = 2u,        // min_tokens not reached and token is EOS or a stop id: -inf
};

// One distinct token of a row that the mask or a penalty touches. Within a
// row the tokens must be distinct (the edit is applied in place and undone);
// ids outside [0, vocab) are ignored. Applied as the CPU does: mask (-inf),
// then repetition (positive logits divided by the penalty, others multiplied),
// then, when output_count > 0, x -= frequency * output_count + presence.
struct TokenEdit {
  int32_t token = 0;
  int32_t output_count = 0;  // occurrences in the output (frequency/presence)
  uint32_t flags = 0;        // kEditRepetition | kEditMask
};

// Builds one row's edits on the host (token ascending, distinct), appended to
// `out`; returns how many were appended. `repetition`: the row has a
// repetition penalty (every prompt and output token gets kEditRepetition);
// `frequency`: it has a frequency or presence penalty (output counts);
// `masked`: the ids masked while min_tokens is not reached (EOS unless
// ignore_eos, stop_token_ids; empty otherwise; duplicates allowed).
// O(L log L) in the history length L.
int append_token_edits(const int32_t* prompt, size_t n_prompt, const int32_t* output,
                       size_t n_output, bool repetition, bool frequency, const int32_t* masked,
                       size_t n_masked, int32_t vocab, std::vector<TokenEdit>& out);

// Workspace of sample(): room for the raw logit of each edited token (so the
// edits can be undone), then per row two arrival counters, the state of a
// pending draw and what each chunk of its logits holds (max, argmax, exp sum,
// top-n, candidate weight). The counters must be
// zero before the first call: zero the workspace once after allocating it
// (cudaMemset); every call leaves them zero.
size_t sample_workspace_bytes(int max_rows, int vocab, int max_edits);

// Samples one token per row. A row's logits are cut into chunks of 4096,
// one CTA each (so a row's sums are the same bits in any batch); the row's
// last CTA to finish completes it from the chunks' figures, and reads the
// whole row again only for a draw with top_k or top_p, an edit that moves
// the argmax, the rank of a chosen token below the max, or a top-n too wide
// to merge from the chunks. A draw with neither top_k nor top_p takes a
// second chunk-parallel pass (two kernels per call).
// logits: [n_rows, vocab] fp32; the edits are applied in place and undone,
//   so the logits read back unchanged after the op.
// rows: [n_rows] (n_rows <= 65535); edits: the concatenated edit lists
//   (rows[r].edit_begin..end index it; may be null when no row has edits).
// workspace: sample_workspace_bytes(>= n_rows, vocab, max_edits) bytes,
//   zeroed once (above); max_edits >= the length of edits.
// out_token: [n_rows] (-1 for a row holding NaN or +inf).
// out_logprob, out_rank: [n_rows]: the raw logprob of the chosen token and
//   1 + the number of tokens with a strictly higher raw logit (0 and 0 for a
//   row with num_logprobs == -1).
// out_top_ids, out_top_logprobs: [n_rows, kMaxTopLogprobs]: the top
//   num_logprobs tokens best first (ties by id), the other slots -1 / -inf.
// The four logprob outputs may be null when no row asks for logprobs
// (out_top_* when no row asks for n > 0).
// parallel_draws: launch the second kernel for the draws without top_k and
//   top_p; false (when every row is greedy, saving the launch) leaves those
//   draws to the row's single CTA: the same tokens, slower.
void sample(float* logits, int vocab, const SampleRowParams* rows, int n_rows,
            const TokenEdit* edits, void* workspace, int max_edits, int32_t* out_token,
            float* out_logprob, int32_t* out_rank, int32_t* out_top_ids, float* out_top_logprobs,
            bool parallel_draws, cudaStream_t s);

// Prompt logprobs: for each row, the raw logprob of tokens[row] and its rank,
// plus the top top_n (0..20) tokens, exactly as Sampler::logprobs. No
// workspace. logits: [n_rows, vocab]; tokens, out_logprob, out_rank:
// [n_rows]; out_top_*: [n_rows, kMaxTopLogprobs] (may be null when top_n == 0).
// A token outside [0, vocab) gets a NaN logprob and rank 0.
void token_logprobs(const float* logits, int vocab, int n_rows, const int32_t* tokens, int top_n,
                    float* out_logprob, int32_t* out_rank, int32_t* out_top_ids,
                    float* out_top_logprobs, cudaStream_t s);

// The sampler's exp: a port of glibc's expf (the FMA variant x86-64 runs),
// so the weights are the CPU's bit for bit. y[i] = exp(x[i]); for tests.
void sampler_expf(const float* x, float* y, int n, cudaStream_t s);

}  // namespace cartserve::ops::cuda

#endif  // CARTSERVE_WITH_CUDA
