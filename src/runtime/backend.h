// The runtime seam: what the engine needs from a device. A backend owns the
// model's weights on its device, the paged KV cache (it declares the layout:
// KvSpec), the step's forward pass and the sampler. The engine hands it one
// flat StepInput per step and gets sampled token ids back; KV moves in and
// out of blocks through asynchronous transfers.
//
// NOTE: threads. execute() and the transfer calls come from the engine
// thread only. A transfer runs beside execute() (a copy thread or stream):
// the blocks it touches must not be read or written by a step until it is
// done, which the callers guarantee (a loading cartridge's blocks belong to
// no running request; an exported sequence's blocks are held until the
// export finishes).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/status.h"
#include "runtime/kv_spec.h"
#include "runtime/kv_transfer.h"
#include "runtime/step.h"

namespace cartserve {

class Backend {
 public:
  virtual ~Backend() = default;

  // "cpu", "cuda:0 NVIDIA H200", ...
  virtual std::string name() const = 0;
  virtual const KvSpec& kv_spec() const = 0;

  // One step: block copies, the forward pass over every row, logits of the
  // sampled and prompt-logprob rows only, sampling. Validates token ids,
  // slots and block tables first (an error leaves the KV cache untouched).
  virtual Status execute(const StepInput& in, StepOutput& out) = 0;

  // The raw logits of in.samples' rows, [samples.size(), vocab] (block copies
  // and KV writes happen as in execute; nothing is sampled). For tests and
  // debugging; the engine never asks for them.
  virtual Status logits(const StepInput& in, std::vector<float>& out) = 0;

  // Host memory the backend copies KV from fastest (page-locked on CUDA, so
  // a load is a DMA with no staging copy); null: plain memory is as good.
  // The host tier keeps loaded cartridges in it.
  virtual std::shared_ptr<void> host_buffer(size_t /*bytes*/) { return nullptr; }

  // Asynchronous KV transfers (see runtime/kv_transfer.h).
  virtual Result<TransferId> start_kv_load(const HostKv& src, const KvBlockList& blocks) = 0;
  virtual Result<TransferId> start_kv_save(const KvBlockList& blocks, const HostKv& dst) = 0;
  // nullopt while running; then its final status, once (the id is forgotten).
  virtual std::optional<Status> poll_transfer(TransferId id) = 0;
  // Blocks until done; its final status (the id is forgotten).
  virtual Status wait_transfer(TransferId id) = 0;
  // Called from the backend's copy thread whenever a transfer finishes (so
  // the engine polls at once, not at its next wake-up); it must not block.
  // null: none. After this returns, the previous one is no longer running.
  virtual void set_transfer_wakeup(std::function<void()> /*wake*/) {}
};

}  // namespace cartserve
