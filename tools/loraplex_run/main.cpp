// loraplex-run: offline batch inference over a base model and PEFT LoRA adapters.
//
//   loraplex-run --model DIR [--adapter NAME=DIR]... --requests FILE.jsonl [--logits OUT.safetensors]
//                [--device cpu|cuda] [--dtype f32|bf16|f16] [--mode unmerged|merged]
//
// Prints one JSON line per request on stdout, in file order: {"id", "tokens", "finish_reason"}. Progress and
// a summary go to stderr. Every input is checked before anything runs; on any error nothing is written to
// stdout or --logits and the exit code is 1 (2 for a bad command line).

#include <CLI/CLI.hpp>

#include <chrono>
#include <cstdio>
#include <iostream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "gpu/cpu_device.hpp"
#include "model/hf_config.hpp"
#include "model/peft_adapter.hpp"
#include "model/safetensors.hpp"
#include "tools/loraplex_run/offline.hpp"
#include "tools/loraplex_run/request_file.hpp"
#if defined(LORAPLEX_HAVE_CUDA_DEVICE)
#include "gpu/cuda_device.hpp"
#endif

namespace {

using namespace loraplex;

std::unique_ptr<gpu::device> make_device(const std::string& name) {
  if (name == "cpu") return std::make_unique<gpu::cpu_device>();
#if defined(LORAPLEX_HAVE_CUDA_DEVICE)
  return std::make_unique<gpu::cuda_device>(0);
#else
  throw std::runtime_error("--device cuda: this loraplex-run was built without the CUDA backend (configure with -DLORAPLEX_CUDA=ON)");
#endif
}

dtype parse_dtype(const std::string& s) {
  if (s == "f32") return dtype::f32;
  if (s == "bf16") return dtype::bf16;
  return dtype::f16;
}

int run(int argc, char** argv) {
  CLI::App app{"loraplex-run: offline batch inference with many LoRA adapters in mixed batches"};
  std::string model_dir, requests_path, logits_path, device_name = "cpu", dtype_name_s = "f32", mode = "unmerged";
  std::vector<std::string> adapter_specs;
  int max_batch_tokens = 256, page_size = 16, kv_cache_mb = 1024;
  app.add_option("--model", model_dir, "base model directory (config.json + safetensors)")->required();
  app.add_option("--adapter", adapter_specs, "NAME=DIR of a PEFT LoRA adapter (repeatable)");
  app.add_option("--requests", requests_path, "JSON-lines request file")->required();
  app.add_option("--logits", logits_path, "write every prompt position's and every decode step's logits (F32 safetensors)");
  app.add_option("--device", device_name, "cpu or cuda")->check(CLI::IsMember({"cpu", "cuda"}));
  app.add_option("--dtype", dtype_name_s, "weight storage (and, on cuda, activation) type")->check(CLI::IsMember({"f32", "bf16", "f16"}));
  app.add_option("--mode", mode, "unmerged: all adapters in mixed batches; merged: each adapter merged in turn")
      ->check(CLI::IsMember({"unmerged", "merged"}));
  app.add_option("--max-batch-tokens", max_batch_tokens, "rows per step (prefill chunks + decodes)")->check(CLI::Range(1, 1 << 16));
  app.add_option("--page-size", page_size, "tokens per KV-cache page")->check(CLI::Range(1, 4096));
  app.add_option("--kv-cache-mb", kv_cache_mb, "upper bound of the KV cache in MiB")->check(CLI::Range(1, 1 << 22));
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }

  const auto t0 = std::chrono::steady_clock::now();
  const model::model_config cfg = model::load_hf_config(model_dir);
  const model::safetensors_checkpoint ckpt = model::safetensors_checkpoint::open_dir(model_dir);

  // Adapters: NAME=DIR, names unique.
  std::vector<std::shared_ptr<const model::lora_adapter>> adapters;
  tools::request_limits limits;
  limits.vocab_size = cfg.vocab_size;
  limits.max_context = cfg.max_position_embeddings;
  for (const std::string& spec : adapter_specs) {
    const auto eq = spec.find('=');
    if (eq == std::string::npos || eq == 0 || eq + 1 == spec.size())
      throw std::runtime_error("--adapter " + spec + ": expected NAME=DIR");
    const std::string name = spec.substr(0, eq);
    if (!limits.adapters.insert(name).second) throw std::runtime_error("--adapter " + name + ": given twice");
    adapters.push_back(std::make_shared<const model::lora_adapter>(model::load_peft_adapter(spec.substr(eq + 1), cfg, name)));
  }
  const std::vector<tools::offline_request> requests = tools::read_request_file(requests_path, limits);

  auto dev = make_device(device_name);
  gpu::runner_options ro;
  ro.weight_type = parse_dtype(dtype_name_s);
  ro.act_type = device_name == "cpu" ? dtype::f32 : ro.weight_type;
  ro.page_size = page_size;
  ro.max_batch_tokens = max_batch_tokens;
  ro.max_logit_rows = max_batch_tokens;
  ro.max_adapters = std::max<int>(1, static_cast<int>(adapters.size()));
  int max_rank = 1;
  for (const auto& a : adapters) max_rank = std::max(max_rank, a->max_rank());
  ro.max_lora_rank = max_rank;
  const std::size_t page_bytes = 2ull * cfg.num_layers * page_size * cfg.kv_dim() * dtype_size(ro.act_type);
  const int budget_pages = static_cast<int>(std::max<std::size_t>(1, (static_cast<std::size_t>(kv_cache_mb) << 20) / page_bytes));
  ro.num_pages = tools::kv_pages_for(requests, page_size, budget_pages);

  std::fprintf(stderr, "loraplex-run: %s on %s, weights %s, %d layers, %zu adapters, %zu requests\n", cfg.architecture.c_str(),
               dev->name().c_str(), std::string(dtype_name(ro.weight_type)).c_str(), cfg.num_layers, adapters.size(), requests.size());
  gpu::model_runner runner(*dev, cfg, ckpt, ro, [&](int done, int all) {
    if (all >= 8 && (done % std::max(1, all / 8) == 0 || done == all))
      std::fprintf(stderr, "loraplex-run: uploaded layer %d/%d\n", done, all);
  });
  std::map<std::string, int> slots;
  for (const auto& a : adapters) slots[a->name] = runner.add_adapter(a);

  tools::offline_options oo;
  oo.want_logits = !logits_path.empty();
  oo.merged = mode == "merged";
  oo.scheduler.max_batch_tokens = max_batch_tokens;
  oo.scheduler.max_running = 1 << 20;
  oo.scheduler.max_context = cfg.max_position_embeddings;
  tools::offline_stats stats;
  const auto t1 = std::chrono::steady_clock::now();
  const std::vector<tools::offline_result> results = tools::run_offline(runner, requests, slots, oo, &stats);
  const auto t2 = std::chrono::steady_clock::now();

  if (oo.want_logits) {
    std::vector<model::tensor_to_write> tensors;
    for (const auto& r : results) {
      tensors.push_back({r.id + ".prefill", dtype::f32,
                         {static_cast<std::int64_t>(r.prefill_logits.size() / cfg.vocab_size), cfg.vocab_size},
                         r.prefill_logits.data()});
      tensors.push_back({r.id + ".decode", dtype::f32,
                         {static_cast<std::int64_t>(r.decode_logits.size() / cfg.vocab_size), cfg.vocab_size},
                         r.decode_logits.data()});
    }
    model::write_safetensors(logits_path, tensors, {{"producer", "loraplex-run"}});
  }
  std::string out;
  long long generated = 0;
  for (const auto& r : results) {
    nlohmann::json j;
    j["id"] = r.id;
    j["tokens"] = r.tokens;
    j["finish_reason"] = engine::finish_reason_name(r.finish);
    out += j.dump() + "\n";
    generated += static_cast<long long>(r.tokens.size());
  }
  std::fputs(out.c_str(), stdout);
  std::fflush(stdout);
  const double load_s = std::chrono::duration<double>(t1 - t0).count();
  const double run_s = std::chrono::duration<double>(t2 - t1).count();
  std::fprintf(stderr,
               "loraplex-run: %lld tokens generated in %.3f s (%.1f tok/s; load %.2f s); %d steps, %lld rows, up to %d rows "
               "and %d adapters in one step, %d preemptions\n",
               generated, run_s, run_s > 0 ? static_cast<double>(generated) / run_s : 0.0, load_s, stats.steps, stats.rows,
               stats.max_rows_in_step, stats.max_adapters_in_step, stats.preemptions);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "loraplex-run: error: %s\n", e.what());
    return 1;
  }
}
