// `cartserve generate MODEL --prompt TEXT`: one completion, streamed to stdout.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <optional>
#include <string>

#include "core/logging.h"
#include "core/mapped_file.h"
#include "model/model.h"
#include "model/sequence_runner.h"
#include "server/cli.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

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
  std::string log_level = "info";
};

int argmax(const std::vector<float>& logits) {
  return static_cast<int>(std::max_element(logits.begin(), logits.end()) - logits.begin());
}

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
  LoadOptions opts;
  auto loaded = load_model(a.model, opts);
  if (!loaded.ok()) {
    std::fprintf(stderr, "error: %s\n", loaded.status().message().c_str());
    return 1;
  }
  const Model& model = **loaded;
  if (a.temperature != 0.f) {
    std::fprintf(stderr, "error: sampling with temperature > 0 is not available yet in generate\n");
    return 2;
  }

  std::vector<int32_t> ids;
  if (a.chat) {
    if (model.chat_template.empty()) {
      std::fprintf(stderr, "error: --chat: the model has no chat template\n");
      return 1;
    }
    auto tmpl = ChatTemplate::parse(model.chat_template);
    if (!tmpl.ok()) {
      std::fprintf(stderr, "error: chat template: %s\n", tmpl.status().message().c_str());
      return 1;
    }
    ChatTemplateOptions copts;
    copts.bos_token = model.bos_text;
    copts.eos_token = model.eos_text;
    auto text = tmpl->render({{"user", prompt}}, copts);
    if (!text.ok()) {
      std::fprintf(stderr, "error: chat template: %s\n", text.status().message().c_str());
      return 1;
    }
    ids = model.tokenizer.encode(*text);
  } else {
    if (model.tokenizer.add_bos_by_default() && model.tokenizer.bos_id()) {
      ids.push_back(*model.tokenizer.bos_id());
    }
    auto body = model.tokenizer.encode(prompt, /*parse_special=*/false);
    ids.insert(ids.end(), body.begin(), body.end());
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

  SequenceRunner runner(model, static_cast<int>(ids.size()) + a.max_tokens);
  const auto t0 = std::chrono::steady_clock::now();
  auto logits = runner.append(ids);
  if (!logits.ok()) {
    std::fprintf(stderr, "error: %s\n", logits.status().message().c_str());
    return 1;
  }
  const auto t1 = std::chrono::steady_clock::now();
  StreamingDetokenizer detok(model.tokenizer);
  const auto& stops = model.tokenizer.stop_ids();
  int generated = 0;
  for (; generated < a.max_tokens; ++generated) {
    const int32_t tok = argmax(*logits);
    if (!a.ignore_eos && std::find(stops.begin(), stops.end(), tok) != stops.end()) break;
    std::fputs(detok.push(tok).c_str(), stdout);
    std::fflush(stdout);
    const int32_t one[1] = {tok};
    logits = runner.append(one);
    if (!logits.ok()) {
      std::fprintf(stderr, "\nerror: %s\n", logits.status().message().c_str());
      return 1;
    }
  }
  std::fputs(detok.flush().c_str(), stdout);
  std::fputs("\n", stdout);
  const auto t2 = std::chrono::steady_clock::now();
  const double prefill_s = std::chrono::duration<double>(t1 - t0).count();
  const double decode_s = std::chrono::duration<double>(t2 - t1).count();
  std::fprintf(stderr,
               "[%zu prompt tokens in %.2f s (%.1f tok/s), %d generated in %.2f s (%.1f tok/s)]\n",
               ids.size(), prefill_s, ids.size() / prefill_s, generated, decode_s,
               generated > 0 ? generated / decode_s : 0.0);
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
