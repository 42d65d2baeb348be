#include "server/serve_options.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <filesystem>

namespace cartserve {

void ServeOptions::add_to(CLI::App& sub) {
  sub.add_option("model", model, "Model: a .gguf file or a Hugging Face model folder")->required();
  sub.add_option("--host", host, "Address to listen on")->default_val("0.0.0.0");
  sub.add_option("--port", port, "Port to listen on (0: any free port)")
      ->default_val(8000)
      ->check(CLI::Range(0, 65535));
  sub.add_option("--api-key", api_key,
                 "Require 'Authorization: Bearer KEY' on /v1 endpoints (also CARTSERVE_API_KEY)")
      ->envname("CARTSERVE_API_KEY");
  sub.add_option("--admin-api-key", admin_api_key,
                 "Require 'Authorization: Bearer KEY' on the routes that change cartridges "
                 "(POST/DELETE /v1/cartridges, pin, unpin); this key also opens every other "
                 "/v1 route (also CARTSERVE_ADMIN_API_KEY)")
      ->envname("CARTSERVE_ADMIN_API_KEY");
  sub.add_option("--max-request-bytes", max_request_bytes,
                 "Largest request body, e.g. 2MiB; larger ones get 413 (default: 64 bytes per "
                 "token of --max-model-len, at least 1MiB)");
  sub.add_option("--max-concurrent-requests", max_concurrent_requests,
                 "Completion requests in the server at once, queued and running; one more gets "
                 "503 with Retry-After (0: no cap)")
      ->default_val(256)
      ->check(CLI::Range(0, 1 << 16));
  sub.add_option("--request-timeout", request_timeout,
                 "Seconds a completion request may take: one still waiting for the engine then "
                 "gets 503, one running ends with finish_reason \"abort\" (0: no limit)")
      ->default_val(0)
      ->check(CLI::NonNegativeNumber);
  sub.add_option("--shutdown-timeout", shutdown_timeout,
                 "On SIGTERM/SIGINT: seconds requests in flight may take to finish before they "
                 "are cancelled (no new requests are accepted meanwhile)")
      ->default_val(30)
      ->check(CLI::NonNegativeNumber);
  sub.add_option("--served-model-name", served_model_name,
                 "Name(s) clients use in 'model' (default: the model path)");
  sub.add_option("--max-model-len", max_model_len,
                 "Context length in tokens (default: the model's maximum)")
      ->check(CLI::PositiveNumber);
  sub.add_option("--block-size", block_size, "Tokens per KV cache block")
      ->default_val(16)
      ->check(CLI::IsMember({1, 2, 4, 8, 16, 32, 64, 128}));
  sub.add_option("--max-num-seqs", max_num_seqs, "Maximum requests in a batch")
      ->default_val(64)
      ->check(CLI::Range(1, 4096));
  sub.add_option("--max-num-batched-tokens", max_num_batched_tokens,
                 "Token budget of one engine step (prefill chunks + decodes)")
      ->default_val(2048)
      ->check(CLI::Range(1, 1 << 20));
  sub.add_option("--device", device,
                 "cpu (fp32 compute) or cuda (bf16 weights and KV on GPU 0; CUDA builds only)")
      ->default_val("cpu")
      ->check(CLI::IsMember({"cpu", "cuda"}));
  sub.add_option("--dtype", dtype,
                 "Weights: auto (CPU: a GGUF's quantized matrices kept as in the file; "
                 "others fp32), float32 (dequantized at load) or bfloat16 (bf16 weight "
                 "matrices, fp32 compute)")
      ->default_val("auto");
  sub.add_option("--kv-cache-memory", kv_cache_memory,
                 "Bytes for the KV cache, e.g. 1GiB, 512MiB (cpu: default 1GiB; cuda: instead of "
                 "what --gpu-memory-utilization leaves)");
  sub.add_option("--gpu-memory-utilization", gpu_memory_utilization,
                 "Fraction of GPU memory for weights, step buffers and KV cache (cuda; default "
                 "0.9); the KV cache takes what the rest leaves")
      ->check(CLI::Range(0.01, 1.0));
  sub.add_flag("--enable-prefix-caching,!--no-enable-prefix-caching", enable_prefix_caching,
               "Reuse KV blocks of identical prompt prefixes (default on)");
  sub.add_flag("--enforce-eager", enforce_eager,
               "cuda: launch every kernel of a decode step instead of replaying CUDA graphs");
  sub.add_option("--cascade-min-prefix", cascade_min_prefix,
                 "cuda: decode sequences whose first N+ positions are shared blocks (a cartridge, "
                 "a cached prompt prefix) attend over them together, each block read once per "
                 "step (default 256; 0: off)")
      ->check(CLI::NonNegativeNumber);
  sub.add_option("--tensor-parallel-size", tensor_parallel_size,
                 "Ranks to shard the model over by attention head and MLP slice: 1, 2, 4 or 8 "
                 "(cpu: threads of this process with an in-process all-reduce; cuda: GPUs 0..N-1, "
                 "NCCL all-reduce)")
      ->default_val(1)
      ->check(CLI::PositiveNumber);
  sub.add_option("--kv-transfer-config", kv_transfer_config,
                 "JSON: {\"kv_connector\": \"CartridgeConnector\", \"kv_connector_extra_config\": "
                 "{...}}");
  sub.add_option("--threads", threads, "CPU threads (default: all cores)")
      ->check(CLI::NonNegativeNumber);
  sub.add_option("--log-level", log_level, "trace|debug|info|warn|error")->default_val("info");
}

Status ServeOptions::validate() const {
  if (tensor_parallel_size != 1 && tensor_parallel_size != 2 && tensor_parallel_size != 4 &&
      tensor_parallel_size != 8) {
    return make_error(ErrorCode::kInvalidArgument, "--tensor-parallel-size {} must be 1, 2, 4 or 8",
                      tensor_parallel_size);
  }
  if (device == "cuda") {
    if (dtype != "auto" && dtype != "bfloat16" && dtype != "bf16") {
      return make_error(ErrorCode::kUnsupported,
                        "--dtype {} is not supported on the CUDA backend (auto or bfloat16: "
                        "bf16 weights and KV, fp32 accumulation)",
                        dtype);
    }
  } else {
    if (gpu_memory_utilization) {
      return make_error(ErrorCode::kUnsupported,
                        "--gpu-memory-utilization applies to --device cuda; on the CPU use "
                        "--kv-cache-memory");
    }
    if (auto d = cpu_weight_dtype(dtype); !d.ok()) return d.status();
  }
  if (max_num_batched_tokens < max_num_seqs) {
    return make_error(ErrorCode::kInvalidArgument,
                      "--max-num-batched-tokens ({}) must be at least --max-num-seqs ({})",
                      max_num_batched_tokens, max_num_seqs);
  }
  return {};
}

Result<ServeOptions::Plan> ServeOptions::plan(const ModelConfig& config) const {
  Plan p;
  int64_t len = config.max_position_embeddings;
  if (config.sliding_window && *config.sliding_window < len) len = *config.sliding_window;
  if (max_model_len) {
    if (*max_model_len > len) {
      return make_error(ErrorCode::kInvalidArgument,
                        "--max-model-len {} exceeds the model's maximum context of {}",
                        *max_model_len, len);
    }
    len = *max_model_len;
  }
  if (kv_cache_memory || device != "cuda") {
    CS_ASSIGN_OR_RETURN(p.kv_bytes, parse_byte_size(kv_cache_memory.value_or("1GiB")));
  }
  p.engine.scheduler.block_size = block_size;
  p.engine.scheduler.max_num_seqs = max_num_seqs;
  p.engine.scheduler.max_num_batched_tokens = max_num_batched_tokens;
  p.engine.scheduler.max_model_len = static_cast<int32_t>(len);
  p.served_model_names = served_model_name;
  if (p.served_model_names.empty()) p.served_model_names.push_back(model);
  p.max_request_bytes = default_max_request_bytes(len);
  if (max_request_bytes) {
    CS_ASSIGN_OR_RETURN(p.max_request_bytes, parse_byte_size(*max_request_bytes));
  }
  return p;
}

uint64_t default_max_request_bytes(int64_t max_model_len) {
  return std::max<uint64_t>(1u << 20,
                            64 * static_cast<uint64_t>(std::max<int64_t>(0, max_model_len)));
}

Result<DType> cpu_weight_dtype(const std::string& dtype) {
  if (dtype == "auto") return DType::kF32;
  const auto d = parse_dtype(dtype);
  if (!d || (*d != DType::kF32 && *d != DType::kBF16)) {
    return make_error(ErrorCode::kUnsupported,
                      "--dtype {} is not supported on the CPU backend (auto, float32 or bfloat16)",
                      dtype);
  }
  return *d;
}

Result<uint64_t> parse_byte_size(const std::string& text) {
  size_t i = 0;
  while (i < text.size() && (std::isdigit(static_cast<unsigned char>(text[i])) || text[i] == '.' ||
                             text[i] == 'e' || text[i] == 'E' || text[i] == '+')) {
    ++i;
  }
  double value = 0;
  try {
    value = std::stod(text.substr(0, i));
  } catch (...) {
    return make_error(ErrorCode::kInvalidArgument, "'{}' is not a size (e.g. 1GiB, 512MiB)", text);
  }
  std::string unit = text.substr(i);
  for (auto& c : unit)
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  double mult = 1;
  if (unit.empty() || unit == "b") {
    mult = 1;
  } else if (unit == "k" || unit == "kb") {
    mult = 1e3;
  } else if (unit == "kib") {
    mult = 1024.0;
  } else if (unit == "m" || unit == "mb") {
    mult = 1e6;
  } else if (unit == "mib") {
    mult = 1024.0 * 1024;
  } else if (unit == "g" || unit == "gb") {
    mult = 1e9;
  } else if (unit == "gib") {
    mult = 1024.0 * 1024 * 1024;
  } else {
    return make_error(ErrorCode::kInvalidArgument, "'{}': unknown size unit '{}'", text, unit);
  }
  const double bytes = value * mult;
  if (!std::isfinite(bytes) || bytes <= 0 || bytes > 1e15) {
    return make_error(ErrorCode::kInvalidArgument, "'{}' is not a usable size", text);
  }
  return static_cast<uint64_t>(bytes);
}

}  // namespace cartserve
