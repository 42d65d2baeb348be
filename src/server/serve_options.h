// Flags of `cartserve serve` (vLLM names) and how they turn into an engine
// configuration for a given model.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "core/status.h"
#include "engine/engine.h"
#include "model/config.h"

namespace cartserve {

struct ServeOptions {
  std::string model;
  std::string host = "0.0.0.0";
  int port = 8000;
  std::string api_key;
  std::string admin_api_key;
  // Request limits (the HTTP edge).
  std::optional<std::string> max_request_bytes;  // default: what the context can use
  int32_t max_concurrent_requests = 256;
  double request_timeout = 0;    // seconds; 0: none
  double shutdown_timeout = 30;  // seconds SIGTERM gives requests in flight
  std::vector<std::string> served_model_name;
  std::optional<int32_t> max_model_len;
  int32_t block_size = 16;
  int32_t max_num_seqs = 64;
  int32_t max_num_batched_tokens = 2048;
  std::string device = "cpu";
  std::string dtype = "auto";
  // Bytes of KV cache (CPU default 1GiB; on CUDA it replaces the share that
  // --gpu-memory-utilization leaves, like vLLM's --kv-cache-memory-bytes).
  std::optional<std::string> kv_cache_memory;
  // Instead of kv_cache_memory: room for this many positions (not a flag of
  // `serve`; `generate` and `cartridge build` size their cache with it).
  int64_t kv_cache_tokens = 0;
  std::optional<double> gpu_memory_utilization;
  bool enable_prefix_caching = true;
  bool enforce_eager = false;  // cuda: no CUDA graphs for decode steps
  // cuda: shared-prefix decode attention for shared prefixes (cartridges,
  // cached prompt blocks) of at least this many positions; 0: off.
  int32_t cascade_min_prefix = 256;
  int32_t tensor_parallel_size = 1;
  std::string kv_transfer_config;
  int32_t threads = 0;
  std::string log_level = "info";

  void add_to(CLI::App& sub);
  // Flag combinations that are invalid or not supported yet.
  Status validate() const;

  // What the flags mean for this model: the scheduler's limits, the served
  // names, the KV cache bytes asked for (the backend decides the blocks).
  struct Plan {
    EngineConfig engine;
    std::vector<std::string> served_model_names;
    uint64_t kv_bytes = 0;  // 0 on CUDA without --kv-cache-memory
    uint64_t max_request_bytes = 0;
  };
  Result<Plan> plan(const ModelConfig& config) const;
};

// --dtype on the CPU backend -> storage of the weight matrices: auto/float32
// -> kF32, bfloat16 -> kBF16 (fp32 compute either way).
Result<DType> cpu_weight_dtype(const std::string& dtype);

// The default request body cap for a context of `max_model_len` tokens:
// 64 bytes per token (JSON-escaped non-Latin text, token id lists), at least 1 MiB.
uint64_t default_max_request_bytes(int64_t max_model_len);

// "1GiB", "512MiB", "2G", "1e9", "1048576" -> bytes.
Result<uint64_t> parse_byte_size(const std::string& text);

}  // namespace cartserve
