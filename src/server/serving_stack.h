// The composition root: the one place that builds the serving stack
//   backend (KV layout and size decided here) -> block pool sized from the
//   backend's KV -> cartridge catalog, host tier, device tier, connector ->
//   cartridge service -> engine
// from ServeOptions. `serve`, `generate`, `cartridge build`, the benchmarks
// and the model tests all build their stacks here; nothing else constructs
// an engine, a block pool, a residency tier or a connector.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "cartridge/cartridge.h"
#include "cartridge/catalog.h"
#include "cartridge/device_tier.h"
#include "cartridge/residency.h"
#include "chat_template/prompt_builder.h"
#include "core/metrics.h"
#include "engine/cartridge_connector.h"
#include "engine/engine.h"
#include "kv/block_pool.h"
#include "model/model.h"
#include "runtime/backend.h"
#include "server/cartridge_service.h"
#include "server/serve_options.h"

namespace cartserve {

struct ServingStack {
  const Model* model = nullptr;
  std::unique_ptr<MetricsRegistry> own_metrics;  // when the caller gave none
  EngineConfig engine_config;
  std::vector<std::string> served_model_names;
  std::unique_ptr<Backend> backend;
  std::unique_ptr<BlockPool> pool;
  // Cartridges (all null without --kv-transfer-config).
  std::unique_ptr<CartridgeCatalog> catalog;
  std::unique_ptr<ResidencyManager> host_tier;
  std::unique_ptr<DeviceKvTier> device_tier;
  std::unique_ptr<CartridgeConnector> connector;
  std::unique_ptr<CartridgeService> cartridges;
  std::unique_ptr<Engine> engine;  // declared last: destroyed (stopped) first
  std::unique_ptr<PromptBuilder> prompts;

  const KvSpec& kv() const { return backend->kv_spec(); }
};

// Loads the model the way `options` asks (path, weight dtype for the device).
Result<std::unique_ptr<Model>> load_model_for(const ServeOptions& options, bool progress = true);

// The backend alone, for `model` under `options` (the device, the KV cache
// size and block size). For code that drives a forward pass directly (golden
// tests, the model benchmark); serving goes through build_serving_stack.
Result<std::unique_ptr<Backend>> make_backend(const Model& model, const ServeOptions& options);

// Everything, running. `model` (and `metrics`, when given) must outlive the
// stack. Errors name the option to change.
Result<std::unique_ptr<ServingStack>> build_serving_stack(const Model& model,
                                                          const ServeOptions& options,
                                                          MetricsRegistry* metrics = nullptr);

struct CartridgeBuildOptions {
  bool raw = false;            // the text as a completion prompt, not the system turn
  DType dtype = DType::kBF16;  // of the stored KV
  std::string device = "cpu";  // where the document is prefilled
  int32_t chunk = 512;         // prefill chunk (tokens per step)
  // Ranks of the prefill (--tensor-parallel-size); the file is whole either way.
  int32_t tensor_parallel_size = 1;
};

// A prefilled cartridge of `document` (PromptBuilder::cartridge's tokens),
// prefilled by an engine request on a stack sized for it.
Result<CartridgeData> build_cartridge(const Model& model, std::string_view document,
                                      const CartridgeBuildOptions& options);

}  // namespace cartserve
