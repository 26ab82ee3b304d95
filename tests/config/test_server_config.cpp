#define BOOST_TEST_MODULE server_config
#include <boost/test/unit_test.hpp>

#include <atomic>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <string>
#include <unistd.h>

#include "config/server_config.hpp"

using namespace loraplex::config;
namespace fs = std::filesystem;

namespace {

/// Runs f, expects a config_error whose key() is `key` and whose message contains every fragment.
void check_error(const std::function<void()>& f, const std::string& key, std::initializer_list<std::string> fragments) {
  try {
    f();
  } catch (const config_error& e) {
    const std::string what = e.what();
    BOOST_TEST_MESSAGE("config_error: " << what);
    BOOST_TEST(e.key() == key, "key " << e.key() << " != " << key << " in: " << what);
    for (const std::string& frag : fragments) BOOST_TEST(what.find(frag) != std::string::npos, "\"" << frag << "\" not in: " << what);
    return;
  }
  BOOST_FAIL("no config_error thrown (expected one for " << key << ")");
}

/// A config that validates: the defaults plus a model path.
[[nodiscard]] server_config valid_config() {
  server_config c;
  c.model.path = "/models/llama";
  return c;
}

/// validate() must fail on `key` after `mutate` is applied to a valid config.
void check_invalid(const std::function<void(server_config&)>& mutate, const std::string& key,
                   std::initializer_list<std::string> fragments = {}) {
  server_config c = valid_config();
  mutate(c);
  check_error([&] { validate(c); }, key, fragments);
  // Every validation message leads with the key.
  try {
    validate(c);
  } catch (const config_error& e) {
    BOOST_TEST(std::string(e.what()).starts_with(key + ": "), e.what());
  }
}

/// A unique scratch directory under the system temp dir, removed at scope exit.
struct temp_dir {
  fs::path path;
  temp_dir() {
    static std::atomic<int> counter{0};
    path = fs::temp_directory_path() / ("loraplex-config-test-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
    fs::create_directories(path);
  }
  ~temp_dir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  temp_dir(const temp_dir&) = delete;
  temp_dir& operator=(const temp_dir&) = delete;

  [[nodiscard]] fs::path write(const std::string& name, const std::string& text) const {
    const fs::path p = path / name;
    std::ofstream(p, std::ios::binary) << text;
    return p;
  }
};

constexpr const char* full_file = R"(# every key set away from its default
[model]
path = "/models/llama-3-8b"
dtype = "f16"

[[adapters]]
name = "fr-legal"
path = "/adapters/fr_legal"

[[adapters]]
name = "sql.v2_b-1"
path = "/adapters/sql"

[server]
listen = "ipc:///run/loraplex.sock"
admin_listen = "0.0.0.0:7000"
admin_token_file = "/etc/loraplex/token"

[engine]
device = "cuda"
gpus = [0, 1, 3]
max_batch_tokens = 2048
max_running = 128
page_size = 32
kv_cache_fraction = 0.9
max_queue_per_adapter = 64
max_queue = 4096
max_context = 8192

[adapters_cache]
host_cache_mb = 65536
max_gpu_adapters = 100
max_lora_rank = 64

[mode]
merge_enabled = false
initial_right_threshold = 2.5
initial_left_threshold = 1.25
aimd_step = 0.1
aimd_factor = 2
)";

}  // namespace

BOOST_AUTO_TEST_CASE(defaults_match_the_documented_values) {
  const server_config c;
  BOOST_TEST(c.model.path.empty());
  BOOST_TEST((c.model.dtype == weight_dtype::bf16));
  BOOST_TEST(c.adapters.empty());
  BOOST_TEST(c.server.listen == "tcp://127.0.0.1:5555");
  BOOST_TEST(c.server.admin_listen == "127.0.0.1:5556");
  BOOST_TEST(!c.server.admin_token_file.has_value());
  BOOST_TEST((c.engine.device == device_kind::cuda));
  BOOST_TEST((c.engine.gpus == std::vector<int>{0}));
  BOOST_TEST(c.engine.max_batch_tokens == 512);
  BOOST_TEST(c.engine.max_running == 256);
  BOOST_TEST(c.engine.page_size == 16);
  BOOST_TEST(c.engine.kv_cache_fraction == 0.85);
  BOOST_TEST(c.engine.max_queue_per_adapter == 1024);
  BOOST_TEST(c.engine.max_queue == 16384);
  BOOST_TEST(c.engine.max_context == 0);
  BOOST_TEST(c.adapters_cache.host_cache_mb == 8192);
  BOOST_TEST(c.adapters_cache.max_gpu_adapters == 256);
  BOOST_TEST(c.adapters_cache.max_lora_rank == 256);
  BOOST_TEST(c.mode.merge_enabled);
  BOOST_TEST(c.mode.initial_right_threshold == 1.0);
  BOOST_TEST(c.mode.initial_left_threshold == 0.56);
  BOOST_TEST(c.mode.aimd_step == 0.05);
  BOOST_TEST(c.mode.aimd_factor == 1.1);
}

BOOST_AUTO_TEST_CASE(defaults_validate_once_model_path_is_set) {
  BOOST_CHECK_NO_THROW(validate(valid_config()));
  check_error([] { validate(server_config{}); }, "model.path", {"model.path", "required"});
  // An empty file is the defaults.
  BOOST_TEST((parse_toml("", "empty.toml") == server_config{}));
  BOOST_TEST((parse_toml("[model]\npath = \"/models/llama\"\n", "min.toml") == valid_config()));
}

BOOST_AUTO_TEST_CASE(full_file_parses) {
  const server_config c = parse_toml(full_file, "full.toml");
  BOOST_CHECK_NO_THROW(validate(c));
  BOOST_TEST(c.model.path == "/models/llama-3-8b");
  BOOST_TEST((c.model.dtype == weight_dtype::f16));
  BOOST_TEST_REQUIRE(c.adapters.size() == 2u);
  BOOST_TEST(c.adapters[0].name == "fr-legal");
  BOOST_TEST(c.adapters[0].path == "/adapters/fr_legal");
  BOOST_TEST(c.adapters[1].name == "sql.v2_b-1");
  BOOST_TEST(c.adapters[1].path == "/adapters/sql");
  BOOST_TEST(c.server.listen == "ipc:///run/loraplex.sock");
  BOOST_TEST(c.server.admin_listen == "0.0.0.0:7000");
  BOOST_TEST((c.server.admin_token_file == std::optional<std::string>("/etc/loraplex/token")));
  BOOST_TEST((c.engine.device == device_kind::cuda));
  BOOST_TEST((c.engine.gpus == std::vector<int>{0, 1, 3}));
  BOOST_TEST(c.engine.max_batch_tokens == 2048);
  BOOST_TEST(c.engine.max_running == 128);
  BOOST_TEST(c.engine.page_size == 32);
  BOOST_TEST(c.engine.kv_cache_fraction == 0.9);
  BOOST_TEST(c.engine.max_queue_per_adapter == 64);
  BOOST_TEST(c.engine.max_queue == 4096);
  BOOST_TEST(c.engine.max_context == 8192);
  BOOST_TEST(c.adapters_cache.host_cache_mb == 65536);
  BOOST_TEST(c.adapters_cache.max_gpu_adapters == 100);
  BOOST_TEST(c.adapters_cache.max_lora_rank == 64);
  BOOST_TEST(!c.mode.merge_enabled);
  BOOST_TEST(c.mode.initial_right_threshold == 2.5);
  BOOST_TEST(c.mode.initial_left_threshold == 1.25);
  BOOST_TEST(c.mode.aimd_step == 0.1);
  BOOST_TEST(c.mode.aimd_factor == 2.0);  // an integer is accepted for a float key
}

BOOST_AUTO_TEST_CASE(other_toml_spellings_parse) {
  // Dotted keys, inline tables and an inline array of adapter tables read the same as the long form.
  const server_config c = parse_toml(R"(
model.path = "/m"
engine = { device = "cpu", gpus = [] }
adapters = [ { name = "a", path = "/a" }, { path = "/b", name = "b" } ]
)",
                                     "short.toml");
  BOOST_TEST(c.model.path == "/m");
  BOOST_TEST((c.engine.device == device_kind::cpu));
  BOOST_TEST(c.engine.gpus.empty());
  BOOST_TEST_REQUIRE(c.adapters.size() == 2u);
  BOOST_TEST(c.adapters[1].name == "b");
  BOOST_CHECK_NO_THROW(validate(c));  // no GPUs needed on cpu
  BOOST_TEST(parse_toml("adapters = []", "x.toml").adapters.empty());
}

BOOST_AUTO_TEST_CASE(file_loads_and_missing_file_names_the_path) {
  const temp_dir dir;
  const fs::path p = dir.write("loraplex.toml", full_file);
  BOOST_TEST((load_toml_file(p) == parse_toml(full_file, "x")));

  const fs::path missing = dir.path / "nope" / "absent.toml";
  check_error([&] { (void)load_toml_file(missing); }, "", {missing.string()});
  check_error([&] { (void)load_toml_file(dir.path); }, "", {dir.path.string(), "not a regular file"});

  // Errors inside a file name the file.
  const fs::path bad = dir.write("bad.toml", "[engine]\npage_size = \"big\"\n");
  check_error([&] { (void)load_toml_file(bad); }, "engine.page_size", {bad.string() + ": engine.page_size", "integer"});
}

BOOST_AUTO_TEST_CASE(syntax_error_names_file_and_line) {
  check_error([] { (void)parse_toml("[model]\npath = \"/m\"\nthis is not toml\n", "config.toml"); }, "", {"config.toml:3:"});
  check_error([] { (void)parse_toml("[engine]\npage_size = 1\npage_size = 2\n", "config.toml"); }, "", {"config.toml:3:"});
}

BOOST_AUTO_TEST_CASE(unknown_keys_and_tables_are_errors) {
  check_error([] { (void)parse_toml("[engine]\nmax_batchtokens = 4\n", "config.toml"); }, "engine.max_batchtokens",
              {"config.toml: unknown key engine.max_batchtokens", "line 2", "did you mean engine.max_batch_tokens?"});
  check_error([] { (void)parse_toml("[enigne]\npage_size = 4\n", "config.toml"); }, "enigne",
              {"config.toml: unknown table enigne", "did you mean engine?"});
  check_error([] { (void)parse_toml("verbose = true\n", "config.toml"); }, "verbose", {"config.toml: unknown key verbose"});
  check_error([] { (void)parse_toml("[engine.extra]\nx = 1\n", "c.toml"); }, "engine.extra", {"c.toml: unknown table engine.extra"});
  check_error([] { (void)parse_toml("[[adapter]]\nname = \"a\"\npath = \"/a\"\n", "c.toml"); }, "adapter",
              {"unknown key adapter", "did you mean adapters?"});
  check_error([] { (void)parse_toml("[[adapters]]\nname = \"a\"\npath = \"/a\"\nrank = 8\n", "c.toml"); }, "adapters[0].rank",
              {"c.toml: unknown key adapters[0].rank"});
}

BOOST_AUTO_TEST_CASE(wrong_types_name_key_and_expected_type) {
  const auto wrong = [](const std::string& text, const std::string& key, const std::string& expected) {
    check_error([&] { (void)parse_toml(text, "config.toml"); }, key, {"config.toml: " + key + ": expected " + expected});
  };
  wrong("[engine]\npage_size = \"16\"", "engine.page_size", "an integer, got a string");
  wrong("[engine]\npage_size = 16.0", "engine.page_size", "an integer, got a float");
  wrong("[engine]\nkv_cache_fraction = \"0.5\"", "engine.kv_cache_fraction", "a float, got a string");
  wrong("[mode]\nmerge_enabled = 1", "mode.merge_enabled", "a boolean, got an integer");
  wrong("[model]\npath = 42", "model.path", "a string, got an integer");
  wrong("[model]\ndtype = \"fp16\"", "model.dtype", "one of \"bf16\", \"f16\", \"f32\", got \"fp16\"");
  wrong("[model]\ndtype = 16", "model.dtype", "one of \"bf16\", \"f16\", \"f32\", got an integer");
  wrong("[engine]\ndevice = \"rocm\"", "engine.device", "one of \"cuda\", \"cpu\"");
  wrong("[engine]\ngpus = 0", "engine.gpus", "a list of integers, got an integer");
  wrong("[engine]\ngpus = [0, \"1\"]", "engine.gpus[1]", "an integer, got a string");
  wrong("[server]\nadmin_token_file = true", "server.admin_token_file", "a string, got a boolean");
  wrong("engine = 3", "engine", "a table, got an integer");
  wrong("[adapters]\nname = \"a\"", "adapters", "an array of tables ([[adapters]]), got a table");
  wrong("adapters = [1]", "adapters[0]", "a table, got an integer");
  wrong("[[adapters]]\nname = \"a\"\npath = 3", "adapters[0].path", "a string, got an integer");
  check_error([] { (void)parse_toml("[engine]\nmax_queue = 4294967296", "config.toml"); }, "engine.max_queue",
              {"config.toml: engine.max_queue:", "out of range"});
  check_error([] { (void)parse_toml("[[adapters]]\nname = \"a\"\n", "config.toml"); }, "adapters[0].path",
              {"config.toml: adapters[0].path: missing"});
  check_error([] { (void)parse_toml("[[adapters]]\npath = \"/a\"\n", "config.toml"); }, "adapters[0].name",
              {"config.toml: adapters[0].name: missing"});
}

BOOST_AUTO_TEST_CASE(every_validation_rule_names_its_key) {
  check_invalid([](server_config& c) { c.model.path.clear(); }, "model.path");

  check_invalid([](server_config& c) { c.adapters = {{"", "/a"}}; }, "adapters[0].name", {"[A-Za-z0-9._-]+"});
  check_invalid([](server_config& c) { c.adapters = {{"ok", "/a"}, {"has space", "/b"}}; }, "adapters[1].name", {"\"has space\""});
  check_invalid([](server_config& c) { c.adapters = {{"a/b", "/a"}}; }, "adapters[0].name");
  check_invalid([](server_config& c) { c.adapters = {{"a", ""}}; }, "adapters[0].path");
  check_invalid([](server_config& c) { c.adapters = {{"a", "/1"}, {"b", "/2"}, {"a", "/3"}}; }, "adapters[2].name",
                {"duplicate", "\"a\"", "adapters[0]"});

  check_invalid([](server_config& c) { c.server.listen = "http://127.0.0.1:5555"; }, "server.listen", {"tcp://, ipc:// or inproc://"});
  check_invalid([](server_config& c) { c.server.listen = "127.0.0.1:5555"; }, "server.listen");
  check_invalid([](server_config& c) { c.server.listen = "ipc://"; }, "server.listen");
  check_invalid([](server_config& c) { c.server.listen = "tcp://127.0.0.1"; }, "server.listen", {"port"});
  check_invalid([](server_config& c) { c.server.admin_listen = "127.0.0.1"; }, "server.admin_listen", {"HOST:PORT"});
  check_invalid([](server_config& c) { c.server.admin_listen = "127.0.0.1:0"; }, "server.admin_listen", {"[1, 65535]"});
  check_invalid([](server_config& c) { c.server.admin_listen = "127.0.0.1:70000"; }, "server.admin_listen");
  check_invalid([](server_config& c) { c.server.admin_listen = ":5556"; }, "server.admin_listen");
  check_invalid([](server_config& c) { c.server.admin_token_file = ""; }, "server.admin_token_file");

  check_invalid([](server_config& c) { c.engine.gpus.clear(); }, "engine.gpus", {"cuda"});
  check_invalid([](server_config& c) { c.engine.gpus = {0, -1}; }, "engine.gpus", {"-1"});
  check_invalid([](server_config& c) { c.engine.gpus = {1, 2, 1}; }, "engine.gpus", {"twice"});
  check_invalid([](server_config& c) { c.engine.max_batch_tokens = 0; }, "engine.max_batch_tokens", {"at least 1", "got 0"});
  check_invalid([](server_config& c) { c.engine.max_running = 0; }, "engine.max_running");
  check_invalid([](server_config& c) { c.engine.page_size = 0; }, "engine.page_size", {"[1, 1024]", "got 0"});
  check_invalid([](server_config& c) { c.engine.page_size = 1025; }, "engine.page_size", {"got 1025"});
  check_invalid([](server_config& c) { c.engine.kv_cache_fraction = 0.0; }, "engine.kv_cache_fraction", {"(0.0, 1.0]"});
  check_invalid([](server_config& c) { c.engine.kv_cache_fraction = 1.01; }, "engine.kv_cache_fraction");
  check_invalid([](server_config& c) { c.engine.kv_cache_fraction = std::nan(""); }, "engine.kv_cache_fraction");
  check_invalid([](server_config& c) { c.engine.max_queue_per_adapter = 0; }, "engine.max_queue_per_adapter");
  check_invalid([](server_config& c) { c.engine.max_queue = 0; }, "engine.max_queue");
  check_invalid([](server_config& c) { c.engine.max_queue = 100; }, "engine.max_running", {"engine.max_queue (100)", "got 256"});
  check_invalid([](server_config& c) { c.engine.max_context = -1; }, "engine.max_context");

  check_invalid([](server_config& c) { c.adapters_cache.host_cache_mb = 0; }, "adapters_cache.host_cache_mb");
  check_invalid([](server_config& c) { c.adapters_cache.host_cache_mb = std::int64_t{1} << 50; }, "adapters_cache.host_cache_mb");
  check_invalid([](server_config& c) { c.adapters_cache.max_gpu_adapters = 0; }, "adapters_cache.max_gpu_adapters");
  check_invalid([](server_config& c) { c.adapters_cache.max_lora_rank = 0; }, "adapters_cache.max_lora_rank", {"[1, 256]"});
  check_invalid([](server_config& c) { c.adapters_cache.max_lora_rank = 257; }, "adapters_cache.max_lora_rank");

  check_invalid([](server_config& c) { c.mode.initial_right_threshold = 0.0; }, "mode.initial_right_threshold", {"(0.0, 4.0]"});
  check_invalid([](server_config& c) { c.mode.initial_right_threshold = 4.5; }, "mode.initial_right_threshold");
  check_invalid([](server_config& c) { c.mode.initial_left_threshold = -0.1; }, "mode.initial_left_threshold");
  check_invalid([](server_config& c) { c.mode.initial_left_threshold = 1.0; }, "mode.initial_left_threshold",
                {"below mode.initial_right_threshold"});
  check_invalid([](server_config& c) { c.mode.initial_left_threshold = 2.0; }, "mode.initial_left_threshold");
  check_invalid([](server_config& c) { c.mode.aimd_step = 0.0; }, "mode.aimd_step");
  check_invalid([](server_config& c) { c.mode.aimd_factor = 1.0; }, "mode.aimd_factor", {"above 1"});
  check_invalid([](server_config& c) { c.mode.aimd_factor = std::numeric_limits<double>::infinity(); }, "mode.aimd_factor");
}

BOOST_AUTO_TEST_CASE(valid_edges_pass) {
  server_config c = valid_config();
  c.engine.page_size = 1024;
  c.engine.kv_cache_fraction = 1.0;
  c.engine.max_running = c.engine.max_queue;
  c.adapters_cache.max_lora_rank = 1;
  c.mode.initial_right_threshold = 4.0;
  c.mode.initial_left_threshold = 3.99;
  c.server.listen = "inproc://loraplex";
  c.server.admin_listen = "[::1]:65535";
  c.engine.device = device_kind::cpu;
  c.engine.gpus = {-1};  // not used on cpu
  c.adapters = {{"A.b_c-9", "/a"}};
  BOOST_CHECK_NO_THROW(validate(c));
}

BOOST_AUTO_TEST_CASE(overrides_of_each_type) {
  server_config c = parse_toml(full_file, "full.toml");
  apply_override(c, "engine.page_size=64");                   // integer
  apply_override(c, "adapters_cache.host_cache_mb=+1048576");  // 64-bit integer
  apply_override(c, "engine.kv_cache_fraction=0.5");          // float
  apply_override(c, "mode.aimd_factor=3");                    // float given as an integer
  apply_override(c, "mode.merge_enabled=true");               // boolean
  apply_override(c, "model.path=/m with space");              // string, taken as is
  apply_override(c, "model.dtype=bf16");                      // enum
  apply_override(c, "engine.device=cpu");
  apply_override(c, "engine.gpus=2,3");                       // list
  apply_override(c, " server.admin_token_file =/tok");        // key trimmed
  BOOST_TEST(c.engine.page_size == 64);
  BOOST_TEST(c.adapters_cache.host_cache_mb == 1048576);
  BOOST_TEST(c.engine.kv_cache_fraction == 0.5);
  BOOST_TEST(c.mode.aimd_factor == 3.0);
  BOOST_TEST(c.mode.merge_enabled);
  BOOST_TEST(c.model.path == "/m with space");
  BOOST_TEST((c.model.dtype == weight_dtype::bf16));
  BOOST_TEST((c.engine.device == device_kind::cpu));
  BOOST_TEST((c.engine.gpus == std::vector<int>{2, 3}));
  BOOST_TEST((c.server.admin_token_file == std::optional<std::string>("/tok")));

  apply_override(c, "engine.gpus=[ 0, 1 ]");
  BOOST_TEST((c.engine.gpus == std::vector<int>{0, 1}));
  apply_override(c, "engine.gpus=5");
  BOOST_TEST((c.engine.gpus == std::vector<int>{5}));
  apply_override(c, "engine.gpus=");
  BOOST_TEST(c.engine.gpus.empty());
  apply_override(c, "server.admin_token_file=");  // empty clears an optional key
  BOOST_TEST(!c.server.admin_token_file.has_value());
  apply_override(c, "server.listen=tcp://*:6000");  // '=' only splits once: the value may hold anything
  BOOST_TEST(c.server.listen == "tcp://*:6000");

  // adapters.NAME=PATH repoints an adapter from the file or adds one.
  apply_override(c, "adapters.fr-legal=/new/fr");
  apply_override(c, "adapters.de=/adapters/de");
  BOOST_TEST_REQUIRE(c.adapters.size() == 3u);
  BOOST_TEST(c.adapters[0].path == "/new/fr");
  BOOST_TEST(c.adapters[2].name == "de");
  BOOST_TEST(c.adapters[2].path == "/adapters/de");
}

BOOST_AUTO_TEST_CASE(bad_overrides_name_the_key) {
  server_config c = valid_config();
  const server_config before = c;
  const auto bad = [&](const std::string& a, const std::string& key, std::initializer_list<std::string> frags) {
    check_error([&] { apply_override(c, a); }, key, frags);
  };
  bad("engine.page_size", "", {"expected KEY=VALUE"});
  bad("engine.page_sz=32", "engine.page_sz", {"unknown key engine.page_sz", "did you mean engine.page_size?"});
  bad("page_size=32", "page_size", {"unknown key page_size"});
  bad("adapters=a", "adapters", {"adapters.NAME=PATH"});
  bad("engine.page_size=abc", "engine.page_size", {"engine.page_size: expected an integer, got \"abc\""});
  bad("engine.page_size=3.5", "engine.page_size", {"expected an integer"});
  bad("engine.page_size=", "engine.page_size", {"expected an integer"});
  bad("engine.page_size=99999999999", "engine.page_size", {"out of range"});
  bad("engine.kv_cache_fraction=half", "engine.kv_cache_fraction", {"expected a float"});
  bad("mode.merge_enabled=yes", "mode.merge_enabled", {"expected a boolean (true or false)"});
  bad("model.dtype=fp32", "model.dtype", {"model.dtype", "\"fp32\""});
  bad("engine.gpus=0,x", "engine.gpus[1]", {"engine.gpus[1]: expected an integer"});
  bad("engine.gpus=0,", "engine.gpus[1]", {"engine.gpus[1]"});
  BOOST_TEST((c == before));  // a failed override changes nothing
}

BOOST_AUTO_TEST_CASE(precedence_defaults_then_file_then_overrides) {
  const temp_dir dir;
  const fs::path p = dir.write("c.toml", "[model]\npath = \"/file\"\n[engine]\npage_size = 32\nmax_running = 8\n");
  server_config c = load_toml_file(p);
  apply_override(c, "engine.page_size=8");
  validate(c);
  BOOST_TEST(c.model.path == "/file");         // file
  BOOST_TEST(c.engine.page_size == 8);         // override beats file
  BOOST_TEST(c.engine.max_running == 8);       // file beats default
  BOOST_TEST(c.engine.max_batch_tokens == 512);  // default
  // Overrides can make a file valid (model.path missing in the file) or invalid; validate runs last.
  server_config d = parse_toml("", "empty.toml");
  apply_override(d, "model.path=/flag");
  BOOST_CHECK_NO_THROW(validate(d));
  apply_override(d, "engine.page_size=0");
  check_error([&] { validate(d); }, "engine.page_size", {});
}

BOOST_AUTO_TEST_CASE(to_toml_round_trips) {
  const server_config full = parse_toml(full_file, "full.toml");
  BOOST_TEST((parse_toml(to_toml(full), "out.toml") == full));
  BOOST_TEST((parse_toml(to_toml(server_config{}), "out.toml") == server_config{}));

  // Awkward values: strings needing escapes, floats without a short form, extreme integers, empty lists.
  server_config c = valid_config();
  c.model.path = "C:\\models\\\"llama\"\t\x01\x7f é";
  c.adapters = {{"a", "/x\ny"}, {"b", "/b"}};
  c.server.admin_token_file = "";
  c.engine.gpus = {};
  c.engine.kv_cache_fraction = 0.1 + 0.2;
  c.engine.max_context = std::numeric_limits<int>::max();
  c.adapters_cache.host_cache_mb = std::numeric_limits<std::int64_t>::max();
  c.mode.initial_right_threshold = 3.0;
  c.mode.initial_left_threshold = 1e-300;
  c.mode.aimd_step = 1e300;
  c.mode.aimd_factor = -0.0;
  const std::string text = to_toml(c);
  BOOST_TEST_MESSAGE(text);
  BOOST_TEST((parse_toml(text, "out.toml") == c));

  // The keys written are exactly key_names() (plus the adapters).
  for (const std::string& k : key_names()) {
    const std::string name = k.substr(k.find('.') + 1);
    BOOST_TEST(text.find("\n" + name + " = ") != std::string::npos, k);
  }
  BOOST_TEST(key_names().size() == 22u);
}

BOOST_AUTO_TEST_CASE(key_names_are_all_overridable) {
  // Every key accepts an override of its own to_toml value (strings unquoted), which round-trips.
  const server_config full = parse_toml(full_file, "full.toml");
  server_config c;
  const std::string text = to_toml(full);
  for (const std::string& k : key_names()) {
    const std::string name = k.substr(k.find('.') + 1);
    const auto at = text.find("\n" + name + " = ");
    BOOST_TEST_REQUIRE(at != std::string::npos, k);
    const auto start = at + name.size() + 4;
    std::string value = text.substr(start, text.find('\n', start) - start);
    if (value.size() >= 2 && value.front() == '"') value = value.substr(1, value.size() - 2);
    BOOST_CHECK_NO_THROW(apply_override(c, k + "=" + value));
  }
  c.adapters = full.adapters;
  BOOST_TEST((c == full));
}
