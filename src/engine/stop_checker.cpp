#include "engine/stop_checker.h"

#include <algorithm>

namespace cartserve {

TokenStop check_token_stop(const Request& req, int32_t max_model_len) {
  const SamplingParams& sp = req.sampling;
  const int32_t n_out = req.num_output_tokens();
  const bool length = n_out >= sp.max_tokens || req.num_positions() >= max_model_len;
  if (n_out == 0) return {};
  if (n_out >= sp.min_tokens) {
    const int32_t last = req.output_token_ids.back();
    const auto has = [last](const std::vector<int32_t>& v) {
      return std::find(v.begin(), v.end(), last) != v.end();
    };
    if (!sp.ignore_eos && has(req.eos_token_ids)) return {FinishReason::kStop, std::nullopt};
    if (has(sp.stop_token_ids)) return {FinishReason::kStop, last};
  }
  if (length) return {FinishReason::kLength, std::nullopt};
  return {};
}

StopStringMatcher::StopStringMatcher(std::vector<std::string> stops,
                                     bool include_stop_str_in_output)
    : stops_(std::move(stops)), include_(include_stop_str_in_output) {
  stops_.erase(std::remove(stops_.begin(), stops_.end(), std::string()), stops_.end());
  for (const auto& s : stops_)
    max_len_ = std::max(max_len_, s.size());
}

StopStringMatcher::Step StopStringMatcher::push(std::string_view text) {
  Step step;
  if (stopped_) return step;
  const size_t old_size = held_.size();
  held_.append(text);
  if (stops_.empty()) {
    step.text.swap(held_);
    return step;
  }
  // A new match ends in the new text, so it starts after old_size - (max_len - 1).
  const size_t from = old_size >= max_len_ ? old_size - (max_len_ - 1) : 0;
  size_t best = std::string::npos;
  const std::string* best_stop = nullptr;
  for (const auto& s : stops_) {
    const size_t at = held_.find(s, from);
    if (at != std::string::npos && (at < best || (at == best && s.size() > best_stop->size()))) {
      best = at;
      best_stop = &s;
    }
  }
  if (best_stop) {
    stopped_ = true;
    step.stopped = true;
    step.matched = *best_stop;
    step.text = held_.substr(0, include_ ? best + best_stop->size() : best);
    held_.clear();
    return step;
  }
  // Hold back the longest suffix that is a proper prefix of some stop string.
  size_t hold = 0;
  for (const auto& s : stops_) {
    for (size_t k = std::min(s.size() - 1, held_.size()); k > hold; --k) {
      if (held_.compare(held_.size() - k, k, s, 0, k) == 0) {
        hold = k;
        break;
      }
    }
  }
  step.text = held_.substr(0, held_.size() - hold);
  held_.erase(0, held_.size() - hold);
  return step;
}

std::string StopStringMatcher::flush() {
  std::string out;
  out.swap(held_);
  return out;
}

}  // namespace cartserve
