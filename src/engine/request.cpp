#include "engine/request.h"

namespace cartserve {

const char* request_status_name(RequestStatus s) {
  switch (s) {
    case RequestStatus::kWaiting:
      return "waiting";
    case RequestStatus::kWaitingForKv:
      return "waiting_for_kv";
    case RequestStatus::kRunning:
      return "running";
    case RequestStatus::kPreempted:
      return "preempted";
    case RequestStatus::kFinished:
      return "finished";
  }
  return "?";
}

const char* finish_reason_name(FinishReason r) {
  switch (r) {
    case FinishReason::kNone:
      return "";
    case FinishReason::kStop:
      return "stop";
    case FinishReason::kLength:
      return "length";
    case FinishReason::kAbort:
      return "abort";
    case FinishReason::kError:
      return "error";
  }
  return "";
}

int32_t Request::token_at(int32_t pos) const {
  const int32_t i = pos - num_virtual_tokens;
  return i < num_prompt_tokens() ? prompt_token_ids[static_cast<size_t>(i)]
                                 : output_token_ids[static_cast<size_t>(i - num_prompt_tokens())];
}

std::vector<int32_t> Request::all_token_ids() const {
  std::vector<int32_t> t = prompt_token_ids;
  t.insert(t.end(), output_token_ids.begin(), output_token_ids.end());
  return t;
}

}  // namespace cartserve
