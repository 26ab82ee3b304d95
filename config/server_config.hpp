#pragma once
/// The server's configuration: one struct of plain sections with defaults, filled from a TOML file and then
/// from command-line overrides (`KEY=VALUE`, same dotted key names), then checked once by validate().
///
///   server_config c = load_toml_file("loraplex.toml");   // defaults < file
///   for (auto& a : overrides) apply_override(c, a);      //          < overrides
///   validate(c);
///
/// Every error is a config_error whose message names the offending key (dotted path, `adapters[2].name`
/// for array entries) and, for files, the file. docs/configuration.md lists every key.

#include <cstdint>
#include <filesystem>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace loraplex::config {

/// A configuration is malformed (syntax, unknown key, wrong type) or invalid (range, cross-field rule).
class config_error : public std::runtime_error {
 public:
  config_error(std::string key, const std::string& message);
  /// The dotted key at fault ("engine.page_size", "adapters[1].name"); empty for a file-level error
  /// (unreadable file, TOML syntax).
  [[nodiscard]] const std::string& key() const noexcept { return key_; }

 private:
  std::string key_;
};

/// Storage type of the base weights (activations follow it on cuda). Spelled "bf16", "f16", "f32".
enum class weight_dtype : std::uint8_t { bf16 = 0, f16 = 1, f32 = 2 };
/// Where the engine runs. Spelled "cuda", "cpu".
enum class device_kind : std::uint8_t { cuda = 0, cpu = 1 };

[[nodiscard]] std::string_view to_string(weight_dtype t) noexcept;
[[nodiscard]] std::string_view to_string(device_kind d) noexcept;

/// [model]
struct model_settings {
  std::string path;                          // base model directory (config.json + safetensors); required
  weight_dtype dtype = weight_dtype::bf16;

  friend bool operator==(const model_settings&, const model_settings&) = default;
};

/// One [[adapters]] entry: an adapter registered at start.
struct adapter_spec {
  std::string name;  // unique, [A-Za-z0-9._-]+; what requests name in "adapter"
  std::string path;  // PEFT adapter directory

  friend bool operator==(const adapter_spec&, const adapter_spec&) = default;
};

/// [server]
struct server_settings {
  std::string listen = "tcp://127.0.0.1:5555";     // ZeroMQ ROUTER endpoint: tcp://, ipc:// or inproc://
  std::string admin_listen = "127.0.0.1:5556";     // admin line console, HOST:PORT
  std::optional<std::string> admin_token_file;     // file holding the admin token; none: no token

  friend bool operator==(const server_settings&, const server_settings&) = default;
};

/// [engine]: one executor per GPU, each with these limits.
struct engine_settings {
  device_kind device = device_kind::cuda;
  std::vector<int> gpus{0};          // CUDA device ordinals, one executor each (ignored on cpu)
  int max_batch_tokens = 512;        // rows per step: prefill chunks + decodes
  int max_running = 256;             // sequences holding KV pages at once, per executor
  int page_size = 16;                // tokens per KV page of the unified pool
  double kv_cache_fraction = 0.85;   // share of free GPU memory given to the unified pool, in (0, 1]
  int max_queue_per_adapter = 1024;  // queued requests per adapter before `overloaded`
  int max_queue = 16384;             // queued requests in all before `overloaded`
  int max_context = 0;               // prompt + output limit; 0: the model's max_position_embeddings

  friend bool operator==(const engine_settings&, const engine_settings&) = default;
};

/// [adapters_cache]
struct adapter_cache_settings {
  std::int64_t host_cache_mb = 8192;  // host (pinned) tier budget, MiB
  int max_gpu_adapters = 256;         // adapters resident on one GPU at once
  int max_lora_rank = 256;            // adapters of a higher rank are refused, in [1, 256]

  friend bool operator==(const adapter_cache_settings&, const adapter_cache_settings&) = default;
};

/// [mode]: dLoRA merged/unmerged switching; the thresholds are starting values that AIMD tunes at run time.
struct mode_settings {
  bool merge_enabled = true;
  double initial_right_threshold = 1.0;  // switch to merged above this
  double initial_left_threshold = 0.56;  // switch back to unmerged below this (< right: hysteresis)
  double aimd_step = 0.05;               // additive step of the tuning, > 0
  double aimd_factor = 1.1;              // multiplicative factor of the tuning, > 1

  friend bool operator==(const mode_settings&, const mode_settings&) = default;
};

struct server_config {
  model_settings model;
  std::vector<adapter_spec> adapters;
  server_settings server;
  engine_settings engine;
  adapter_cache_settings adapters_cache;
  mode_settings mode;

  friend bool operator==(const server_config&, const server_config&) = default;
};

/// Reads and parses a TOML file over the defaults; messages name the file. Does not validate.
[[nodiscard]] server_config load_toml_file(const std::filesystem::path& file);
/// Parses TOML text over the defaults; `source` names it in messages. Unknown keys and tables and wrong
/// types are errors. Does not validate.
[[nodiscard]] server_config parse_toml(std::string_view text, const std::string& source);

/// Applies one command-line override `KEY=VALUE` (`engine.page_size=32`, `model.path=/m`,
/// `engine.gpus=0,1`, `mode.merge_enabled=false`), VALUE parsed by the key's type. `adapters.NAME=PATH`
/// registers an adapter (or repoints the one of that name). An empty VALUE clears an optional key or a list.
void apply_override(server_config& c, std::string_view assignment);

/// Checks ranges and cross-field rules; throws config_error naming the first offending key.
void validate(const server_config& c);

/// TOML text that parse_toml reads back to an equal struct (every key written, defaults included; strings
/// must be valid UTF-8, as TOML requires).
[[nodiscard]] std::string to_toml(const server_config& c);

/// Every settable scalar or list key in file order ("model.path", …, "mode.aimd_factor"); not `adapters`.
[[nodiscard]] std::vector<std::string> key_names();

}  // namespace loraplex::config
