#include "server/serving_stack.h"

#include <cstring>

#include "core/logging.h"
#include "core/progress.h"
#include "engine/cartridge_builder.h"
#include "model/rope.h"
#include "runtime/cpu/cpu_backend.h"
#include "runtime/cpu/tp_backend.h"
#ifdef CARTSERVE_WITH_CUDA
#include "runtime/cuda/cuda_backend.h"
#include "runtime/cuda/tp_cuda_backend.h"
#endif
#include "server/kv_transfer_config.h"

namespace cartserve {

namespace {

constexpr uint64_t kDefaultHostBudget = 4ull << 30;

// `data` moved into host memory the backend copies from fastest (page-locked
// on CUDA), when it has such memory; else as it is.
Result<CartridgeData> in_backend_host_memory(CartridgeData data, Backend& backend) {
  for (auto* tensors : {&data.keys, &data.values}) {
    for (Tensor& t : *tensors) {
      std::shared_ptr<void> buf = backend.host_buffer(t.nbytes());
      if (!buf) return data;  // plain memory (what is moved already stays usable)
      std::memcpy(buf.get(), t.raw(), t.nbytes());
      t = Tensor::adopt(t.dtype(), t.shape(), std::move(buf));
    }
  }
  return data;
}

// The cartridge part of the stack, from --kv-transfer-config.
Status build_cartridges(const Model& model, const CartridgeConnectorConfig& config,
                        MetricsRegistry& metrics, ServingStack& s) {
  const KvSpec& kv = s.kv();
  const uint64_t kv_bytes = kv.bytes_per_block() * static_cast<uint64_t>(kv.num_blocks - 1);
  DeviceTierConfig dc;
  dc.block_size = kv.block_size;
  dc.bytes_per_block = kv.bytes_per_block();
  dc.budget_bytes = config.gpu_capacity_bytes.value_or(kv_bytes / 2);
  if (dc.budget_bytes > kv_bytes) {
    return make_error(ErrorCode::kInvalidArgument,
                      "--kv-transfer-config: gpu_capacity_bytes ({}) exceeds the KV cache ({} "
                      "bytes)",
                      dc.budget_bytes, kv_bytes);
  }
  ResidencyConfig hc;
  hc.host_budget_bytes = config.host_capacity_bytes.value_or(kDefaultHostBudget);

  s.catalog = std::make_unique<CartridgeCatalog>();
  CartridgeLoader files =
      catalog_loader(*s.catalog, rope_inv_freq(model.config, model.weights.rope_freq_factors));
  Backend* backend = s.backend.get();
  s.host_tier = std::make_unique<ResidencyManager>(
      hc, [files, backend](const std::string& path) -> Result<CartridgeData> {
        CS_ASSIGN_OR_RETURN(CartridgeData d, files(path));
        return in_backend_host_memory(std::move(d), *backend);
      });
  s.device_tier = std::make_unique<DeviceKvTier>(*s.pool, dc);
  s.connector = std::make_unique<CartridgeConnector>(*s.host_tier, *s.device_tier, *s.catalog,
                                                     config.mode, kv.block_size);
  CS_ASSIGN_OR_RETURN(
      s.cartridges,
      CartridgeService::create(
          config, model, kv.block_size,
          CartridgeParts{*s.catalog, *s.host_tier, *s.device_tier, *s.connector}, metrics));
  return {};
}

}  // namespace

Result<std::unique_ptr<Model>> load_model_for(const ServeOptions& options, bool progress) {
  LoadOptions lo;
  lo.progress = progress;
  // On the GPU the matrices travel in bf16: keep them so on the host too.
  if (options.device == "cuda") {
    lo.weight_dtype = DType::kBF16;
  } else {
    CS_ASSIGN_OR_RETURN(lo.weight_dtype, cpu_weight_dtype(options.dtype));
    // auto: a GGUF's quantized matrices stay quantized (README, --dtype).
    lo.keep_quantized = options.dtype == "auto";
  }
  return load_model(options.model, lo);
}

Result<std::unique_ptr<Backend>> make_backend(const Model& model, const ServeOptions& options) {
  CS_ASSIGN_OR_RETURN(ServeOptions::Plan plan, options.plan(model.config));
  if (options.device == "cuda") {
#ifdef CARTSERVE_WITH_CUDA
    cuda::CudaOptions co;
    co.block_size = options.block_size;
    co.gpu_memory_utilization = options.gpu_memory_utilization.value_or(0.9);
    co.kv_cache_tokens = options.kv_cache_tokens;
    co.kv_cache_bytes = plan.kv_bytes;
    co.cuda_graphs = !options.enforce_eager;
    co.cascade_min_prefix = options.cascade_min_prefix;
    co.max_num_batched_tokens = plan.engine.scheduler.max_num_batched_tokens;
    co.max_num_seqs = plan.engine.scheduler.max_num_seqs;
    co.max_model_len = plan.engine.scheduler.max_model_len;
    if (options.tensor_parallel_size > 1) {  // one rank per GPU over NCCL
      CS_ASSIGN_OR_RETURN(auto tp,
                          cuda::TpCudaBackend::create(model, options.tensor_parallel_size, co));
      return std::unique_ptr<Backend>(std::move(tp));
    }
    CS_ASSIGN_OR_RETURN(auto gpu, cuda::CudaBackend::create(model, co));
    return std::unique_ptr<Backend>(std::move(gpu));
#else
    return make_error(ErrorCode::kUnsupported,
                      "--device cuda: this build has no CUDA backend (nvcc was not found when it "
                      "was built)");
#endif
  }
  const KvBudget budget{plan.kv_bytes, options.kv_cache_tokens};
  if (options.tensor_parallel_size > 1) {  // ranks as threads (runtime/cpu/tp_backend.h)
    CS_ASSIGN_OR_RETURN(auto tp, TpCpuBackend::create(model, options.tensor_parallel_size,
                                                      options.block_size, budget));
    return std::unique_ptr<Backend>(std::move(tp));
  }
  CS_ASSIGN_OR_RETURN(auto cpu, CpuBackend::create(model, options.block_size, budget));
  return std::unique_ptr<Backend>(std::move(cpu));
}

Result<std::unique_ptr<ServingStack>> build_serving_stack(const Model& model,
                                                          const ServeOptions& options,
                                                          MetricsRegistry* metrics) {
  CS_RETURN_IF_ERROR(options.validate());
  CS_ASSIGN_OR_RETURN(ServeOptions::Plan plan, options.plan(model.config));
  std::optional<KvTransferConfig> kv_config;
  if (!options.kv_transfer_config.empty()) {
    CS_ASSIGN_OR_RETURN(kv_config, parse_kv_transfer_config(options.kv_transfer_config));
  }
  auto s = std::make_unique<ServingStack>();
  s->model = &model;
  s->engine_config = plan.engine;
  s->served_model_names = plan.served_model_names;
  CS_ASSIGN_OR_RETURN(s->backend, make_backend(model, options));
  const KvSpec& kv = s->kv();
  const int32_t max_len = plan.engine.scheduler.max_model_len;
  if (kv.num_blocks - 1 < (max_len + kv.block_size - 1) / kv.block_size) {
    return make_error(ErrorCode::kInvalidArgument,
                      "the KV cache holds {} tokens ({}), less than one request of "
                      "--max-model-len {}; raise --kv-cache-memory or lower --max-model-len",
                      kv.num_tokens(), format_bytes(kv.total_bytes()), max_len);
  }
  CS_ASSIGN_OR_RETURN(BlockPool pool,
                      BlockPool::create(kv.num_blocks, options.enable_prefix_caching));
  s->pool = std::make_unique<BlockPool>(std::move(pool));

  if (kv_config) {
    // The cartridge service registers its metrics somewhere, read or not.
    if (!metrics) s->own_metrics = std::make_unique<MetricsRegistry>();
    CS_RETURN_IF_ERROR(
        build_cartridges(model, kv_config->cartridge, metrics ? *metrics : *s->own_metrics, *s));
  }
  CS_ASSIGN_OR_RETURN(s->engine, Engine::create(model, *s->backend, *s->pool, s->engine_config,
                                                metrics, s->connector.get()));
  if (s->cartridges) CS_RETURN_IF_ERROR(s->cartridges->attach(*s->engine));
  s->prompts = std::make_unique<PromptBuilder>(model);
  return s;
}

Result<CartridgeData> build_cartridge(const Model& model, std::string_view document,
                                      const CartridgeBuildOptions& options) {
  CS_ASSIGN_OR_RETURN(std::vector<int32_t> ids,
                      PromptBuilder(model).cartridge(document, options.raw));
  const auto T = static_cast<int64_t>(ids.size());
  if (T + 1 > model.config.max_position_embeddings) {
    return make_error(ErrorCode::kOutOfRange, "the document is {} tokens, beyond the model's {}", T,
                      model.config.max_position_embeddings);
  }
  ServeOptions so;
  so.model = model.path;
  so.device = options.device;
  so.max_num_seqs = 1;
  so.max_num_batched_tokens = options.chunk;
  so.max_model_len = static_cast<int32_t>(T + 1);
  so.kv_cache_tokens = T + 1;
  so.enable_prefix_caching = false;
  so.tensor_parallel_size = options.tensor_parallel_size;
  CS_ASSIGN_OR_RETURN(auto stack, build_serving_stack(model, so));
  return export_cartridge(*stack->engine, ids, options.dtype);
}

}  // namespace cartserve
