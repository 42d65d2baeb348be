// `cartserve generate MODEL --prompt TEXT`: one completion, streamed to stdout.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <optional>
#include <string>

#include "chat_template/prompt_builder.h"
#include "core/logging.h"
#include "core/mapped_file.h"
#include "server/cli.h"
#include "server/serve_options.h"
#include "server/serving_stack.h"

namespace cartserve::cli {

namespace {

struct GenerateArgs {
  std::string model;
  std::string prompt;
  std::string prompt_file;
  int max_tokens = 128;
  float temperature = 0.f;
  float top_p = 1.f;
  int top_k = 0;
  std::optional<uint64_t> seed;
  bool chat = false;
  bool ignore_eos = false;
  std::string dtype = "auto";
  std::string device = "cpu";
  int32_t tensor_parallel_size = 1;
  std::string log_level = "info";
};

int run_generate(const GenerateArgs& a) {
  set_log_level(a.log_level);
  std::string prompt = a.prompt;
  if (!a.prompt_file.empty()) {
    auto text = read_file(a.prompt_file);
    if (!text.ok()) {
      std::fprintf(stderr, "error: %s\n", text.status().message().c_str());
      return 1;
    }
    prompt = *text;
  }
  ServeOptions so;
  so.model = a.model;
  so.dtype = a.dtype;
  so.device = a.device;
  so.tensor_parallel_size = a.tensor_parallel_size;
  if (Status v = so.validate(); !v.ok()) {
    std::fprintf(stderr, "error: %s\n", v.message().c_str());
    return 1;
  }
  so.max_num_seqs = 1;
  so.max_num_batched_tokens = 512;
  auto loaded = load_model_for(so);
  if (!loaded.ok()) {
    std::fprintf(stderr, "error: %s\n", loaded.status().message().c_str());
    return 1;
  }
  const Model& model = **loaded;

  const PromptBuilder prompts(model);
  std::vector<int32_t> ids;
  if (a.chat) {
    auto chat = prompts.chat({{"user", prompt}}, /*add_generation_prompt=*/true,
                             /*after_cartridge=*/false);
    if (!chat.ok()) {
      std::fprintf(stderr, "error: --chat: %s\n", chat.status().message().c_str());
      return 1;
    }
    ids = std::move(chat).value();
  } else {
    ids = prompts.completion(prompt, /*after_cartridge=*/false, /*parse_special=*/false);
  }
  if (ids.empty()) {
    std::fprintf(stderr, "error: the prompt is empty\n");
    return 1;
  }
  const int64_t max_len = model.config.max_position_embeddings;
  if (static_cast<int64_t>(ids.size()) + a.max_tokens > max_len) {
    std::fprintf(stderr, "error: prompt (%zu tokens) + max tokens (%d) exceed the context (%lld)\n",
                 ids.size(), a.max_tokens, static_cast<long long>(max_len));
    return 1;
  }

  // One request through the serving stack (same scheduler, sampler and
  // detokenizer as `serve`), its KV cache sized for this request.
  so.max_model_len = static_cast<int32_t>(ids.size()) + a.max_tokens;
  so.kv_cache_tokens = *so.max_model_len;
  auto stack = build_serving_stack(model, so);
  if (!stack.ok()) {
    std::fprintf(stderr, "error: %s\n", stack.status().message().c_str());
    return 1;
  }
  Engine& engine = *(*stack)->engine;
  GenerateRequest g;
  g.id = "generate";
  g.prompt_token_ids = ids;
  g.sampling.max_tokens = a.max_tokens;
  g.sampling.temperature = a.temperature;
  g.sampling.top_p = a.top_p;
  g.sampling.top_k = a.top_k;
  g.sampling.seed = a.seed;
  g.sampling.ignore_eos = a.ignore_eos;
  const auto t0 = std::chrono::steady_clock::now();
  auto stream = engine.submit(std::move(g));
  std::optional<std::chrono::steady_clock::time_point> t_first;
  int generated = 0;
  for (bool done = false; !done;) {
    for (auto& o : stream->next(std::chrono::milliseconds(100))) {
      if (!o.error.ok()) {
        std::fprintf(stderr, "\nerror: %s\n", o.error.message().c_str());
        return 1;
      }
      if (!t_first && !o.token_ids.empty()) t_first = std::chrono::steady_clock::now();
      std::fputs(o.text.c_str(), stdout);
      std::fflush(stdout);
      generated = std::max(generated, o.num_output_tokens);
      done = done || o.finished;
    }
  }
  std::fputs("\n", stdout);
  std::fflush(stdout);
  const auto t2 = std::chrono::steady_clock::now();
  const auto t1 = t_first.value_or(t2);
  std::fprintf(
      stderr,
      "[%zu prompt tokens, first token after %.2f s; %d generated, %.1f tok/s after the "
      "first]\n",
      ids.size(), std::chrono::duration<double>(t1 - t0).count(), generated,
      generated > 1 ? (generated - 1) / std::chrono::duration<double>(t2 - t1).count() : 0.0);
  return 0;
}

}  // namespace

void register_generate(CLI::App& app) {
  auto args = std::make_shared<GenerateArgs>();
  auto* sub = app.add_subcommand(
      "generate", "Generate a continuation of a prompt (offline, one request) and print it");
  sub->add_option("model", args->model, "Model: a .gguf file or a Hugging Face model folder")
      ->required();
  auto* p = sub->add_option("-p,--prompt", args->prompt, "Prompt text");
  auto* pf = sub->add_option("--prompt-file", args->prompt_file, "Read the prompt from a file");
  p->excludes(pf);
  sub->add_option("-n,--max-tokens", args->max_tokens, "Maximum tokens to generate")
      ->default_val(128)
      ->check(CLI::Range(1, 1 << 20));
  sub->add_option("--temperature", args->temperature,
                  "Sampling temperature; 0 = greedy (deterministic)")
      ->default_val(0.0)
      ->check(CLI::Range(0.0, 100.0));
  sub->add_option("--top-p", args->top_p, "Nucleus sampling: keep the smallest set with mass P")
      ->default_val(1.0)
      ->check(CLI::Range(0.0, 1.0));
  sub->add_option("--top-k", args->top_k, "Keep the K most likely tokens (0 = all)")
      ->default_val(0)
      ->check(CLI::NonNegativeNumber);
  sub->add_option("--seed", args->seed, "Random seed for sampling (reproducible output)");
  sub->add_flag("--chat", args->chat,
                "Wrap the prompt as a user message with the model's chat template");
  sub->add_flag("--ignore-eos", args->ignore_eos, "Keep generating after end-of-sequence tokens");
  sub->add_option("--dtype", args->dtype,
                  "Weights: auto (CPU: a GGUF's quantized matrices kept), float32 or bfloat16")
      ->default_val("auto");
  sub->add_option("--device", args->device, "cpu or cuda (CUDA builds)")
      ->default_val("cpu")
      ->check(CLI::IsMember({"cpu", "cuda"}));
  sub->add_option("--tensor-parallel-size", args->tensor_parallel_size,
                  "Ranks to shard the model over: 1, 2, 4 or 8 (cpu: threads of this process)")
      ->default_val(1)
      ->check(CLI::PositiveNumber);
  sub->add_option("--log-level", args->log_level, "trace|debug|info|warn|error")
      ->default_val("info");
  sub->callback([args] {
    if (args->prompt.empty() && args->prompt_file.empty()) {
      throw CLI::RequiredError("--prompt or --prompt-file");
    }
    set_exit_code(run_generate(*args));
  });
}

}  // namespace cartserve::cli
