#include "config/server_config.hpp"

// NOTE: toml++ is compiled into this file (header-only mode), not linked as libtomlplusplus.so: binaries run on
// GPU hosts that carry no extra shared libraries (the reason Boost.Test is static, too).
#define TOML_HEADER_ONLY 1
#define TOML_ENABLE_FORMATTERS 0
#include <toml++/toml.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <cmath>
#include <fstream>
#include <limits>
#include <sstream>
#include <system_error>
#include <type_traits>

namespace loraplex::config {

config_error::config_error(std::string key, const std::string& message)
    : std::runtime_error(message), key_(std::move(key)) {}

std::string_view to_string(weight_dtype t) noexcept {
  switch (t) {
    case weight_dtype::bf16: return "bf16";
    case weight_dtype::f16: return "f16";
    case weight_dtype::f32: return "f32";
  }
  return "?";
}

std::string_view to_string(device_kind d) noexcept {
  switch (d) {
    case device_kind::cuda: return "cuda";
    case device_kind::cpu: return "cpu";
  }
  return "?";
}

namespace {

/// A value does not fit its key. `suffix` extends the key for list elements ("[1]").
struct value_error {
  std::string detail;
  std::string suffix;
};

[[nodiscard]] std::string quote_string(std::string_view s) {
  std::string out = "\"";
  for (const char ch : s) {
    const auto u = static_cast<unsigned char>(ch);
    switch (ch) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\b': out += "\\b"; break;
      case '\t': out += "\\t"; break;
      case '\n': out += "\\n"; break;
      case '\f': out += "\\f"; break;
      case '\r': out += "\\r"; break;
      default:
        if (u < 0x20 || u == 0x7f) {
          static constexpr char hex[] = "0123456789ABCDEF";
          out += "\\u00";
          out += hex[u >> 4];
          out += hex[u & 0xf];
        } else {
          out += ch;
        }
    }
  }
  out += '"';
  return out;
}

[[nodiscard]] std::string_view trim(std::string_view s) noexcept {
  const auto first = s.find_first_not_of(" \t");
  if (first == std::string_view::npos) return {};
  const auto last = s.find_last_not_of(" \t");
  return s.substr(first, last - first + 1);
}

[[nodiscard]] std::string_view node_kind(const toml::node& n) noexcept {
  switch (n.type()) {
    case toml::node_type::table: return "a table";
    case toml::node_type::array: return "an array";
    case toml::node_type::string: return "a string";
    case toml::node_type::integer: return "an integer";
    case toml::node_type::floating_point: return "a float";
    case toml::node_type::boolean: return "a boolean";
    case toml::node_type::date: return "a date";
    case toml::node_type::time: return "a time";
    case toml::node_type::date_time: return "a date-time";
    case toml::node_type::none: break;
  }
  return "nothing";
}

[[nodiscard]] std::string format_double(double v) {
  std::array<char, 64> buf{};
  const auto [end, ec] = std::to_chars(buf.data(), buf.data() + buf.size(), v);  // shortest round-trip form
  std::string s(buf.data(), ec == std::errc{} ? end : buf.data());
  if (s.find_first_of(".eEn") == std::string::npos) s += ".0";  // "1" would read back as an integer
  return s;
}

// ---- one overload set per value type: type name, from a TOML node, from flag text, to TOML text ----

template <typename T>
struct type_name;
template <> struct type_name<int> { static constexpr std::string_view value = "an integer"; };
template <> struct type_name<std::int64_t> { static constexpr std::string_view value = "an integer"; };
template <> struct type_name<double> { static constexpr std::string_view value = "a float"; };
template <> struct type_name<bool> { static constexpr std::string_view value = "a boolean"; };
template <> struct type_name<std::string> { static constexpr std::string_view value = "a string"; };
template <> struct type_name<std::optional<std::string>> { static constexpr std::string_view value = "a string"; };
template <> struct type_name<std::vector<int>> { static constexpr std::string_view value = "a list of integers"; };
template <> struct type_name<weight_dtype> { static constexpr std::string_view value = "one of \"bf16\", \"f16\", \"f32\""; };
template <> struct type_name<device_kind> { static constexpr std::string_view value = "one of \"cuda\", \"cpu\""; };

template <typename T>
[[noreturn]] void wrong_type(const toml::node& n) {
  throw value_error{"expected " + std::string(type_name<T>::value) + ", got " + std::string(node_kind(n)), {}};
}

[[nodiscard]] int narrow_int(std::int64_t v) {
  if (v < std::numeric_limits<int>::min() || v > std::numeric_limits<int>::max())
    throw value_error{"integer " + std::to_string(v) + " is out of range (32-bit)", {}};
  return static_cast<int>(v);
}

constexpr std::array all_dtypes{weight_dtype::bf16, weight_dtype::f16, weight_dtype::f32};
constexpr std::array all_devices{device_kind::cuda, device_kind::cpu};
[[nodiscard]] constexpr const auto& all_values(weight_dtype) noexcept { return all_dtypes; }
[[nodiscard]] constexpr const auto& all_values(device_kind) noexcept { return all_devices; }

template <typename E>
[[nodiscard]] E enum_from(std::string_view s) {
  for (const E e : all_values(E{})) {
    if (to_string(e) == s) return e;
  }
  throw value_error{"expected " + std::string(type_name<E>::value) + ", got " + quote_string(s), {}};
}

void read_node(const toml::node& n, std::int64_t& out) {
  if (!n.is_integer()) wrong_type<std::int64_t>(n);
  out = n.as_integer()->get();
}
void read_node(const toml::node& n, int& out) {
  if (!n.is_integer()) wrong_type<int>(n);
  out = narrow_int(n.as_integer()->get());
}
void read_node(const toml::node& n, double& out) {
  // An integer is accepted where a float is expected: `aimd_factor = 2` means 2.0.
  if (n.is_floating_point()) out = n.as_floating_point()->get();
  else if (n.is_integer()) out = static_cast<double>(n.as_integer()->get());
  else wrong_type<double>(n);
}
void read_node(const toml::node& n, bool& out) {
  if (!n.is_boolean()) wrong_type<bool>(n);
  out = n.as_boolean()->get();
}
void read_node(const toml::node& n, std::string& out) {
  if (!n.is_string()) wrong_type<std::string>(n);
  out = n.as_string()->get();
}
void read_node(const toml::node& n, std::optional<std::string>& out) {
  if (!n.is_string()) wrong_type<std::optional<std::string>>(n);
  out = n.as_string()->get();
}
void read_node(const toml::node& n, std::vector<int>& out) {
  const toml::array* a = n.as_array();
  if (a == nullptr) wrong_type<std::vector<int>>(n);
  std::vector<int> v;
  for (std::size_t i = 0; i < a->size(); ++i) {
    const toml::node& el = *a->get(i);
    if (!el.is_integer())
      throw value_error{"expected an integer, got " + std::string(node_kind(el)), "[" + std::to_string(i) + "]"};
    try {
      v.push_back(narrow_int(el.as_integer()->get()));
    } catch (value_error& e) {
      e.suffix = "[" + std::to_string(i) + "]";
      throw;
    }
  }
  out = std::move(v);
}
template <typename E>
  requires std::is_enum_v<E>
void read_node(const toml::node& n, E& out) {
  if (!n.is_string()) wrong_type<E>(n);
  out = enum_from<E>(n.as_string()->get());
}

[[nodiscard]] std::int64_t int_from_text(std::string_view s) {
  s = trim(s);
  std::string_view digits = s;
  if (!digits.empty() && digits.front() == '+') digits.remove_prefix(1);
  std::int64_t v = 0;
  const auto [ptr, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), v);
  if (digits.empty() || ec == std::errc::invalid_argument || ptr != digits.data() + digits.size())
    throw value_error{"expected an integer, got " + quote_string(s), {}};
  if (ec == std::errc::result_out_of_range) throw value_error{"integer " + std::string(s) + " is out of range", {}};
  return v;
}

void read_text(std::string_view s, std::int64_t& out) { out = int_from_text(s); }
void read_text(std::string_view s, int& out) { out = narrow_int(int_from_text(s)); }
void read_text(std::string_view s, double& out) {
  s = trim(s);
  std::string_view digits = s;
  if (!digits.empty() && digits.front() == '+') digits.remove_prefix(1);
  double v = 0;
  const auto [ptr, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), v);
  if (digits.empty() || ec != std::errc{} || ptr != digits.data() + digits.size())
    throw value_error{"expected a float, got " + quote_string(s), {}};
  out = v;
}
void read_text(std::string_view s, bool& out) {
  s = trim(s);
  if (s == "true") out = true;
  else if (s == "false") out = false;
  else throw value_error{"expected a boolean (true or false), got " + quote_string(s), {}};
}
void read_text(std::string_view s, std::string& out) { out = std::string(s); }
void read_text(std::string_view s, std::optional<std::string>& out) {
  if (s.empty()) out.reset();
  else out = std::string(s);
}
void read_text(std::string_view s, std::vector<int>& out) {
  s = trim(s);
  if (s.size() >= 2 && s.front() == '[' && s.back() == ']') s = trim(s.substr(1, s.size() - 2));
  std::vector<int> v;
  std::size_t i = 0;
  while (!s.empty()) {
    const auto comma = s.find(',');
    try {
      v.push_back(narrow_int(int_from_text(s.substr(0, comma))));
    } catch (value_error& e) {
      e.suffix = "[" + std::to_string(i) + "]";
      throw;
    }
    if (comma == std::string_view::npos) break;
    s.remove_prefix(comma + 1);
    if (trim(s).empty()) throw value_error{"expected an integer after the last comma", "[" + std::to_string(i + 1) + "]"};
    ++i;
  }
  out = std::move(v);
}
template <typename E>
  requires std::is_enum_v<E>
void read_text(std::string_view s, E& out) {
  out = enum_from<E>(trim(s));
}

bool write_value(std::string& out, int v) { return out += std::to_string(v), true; }
bool write_value(std::string& out, std::int64_t v) { return out += std::to_string(v), true; }
bool write_value(std::string& out, double v) { return out += format_double(v), true; }
bool write_value(std::string& out, bool v) { return out += v ? "true" : "false", true; }
bool write_value(std::string& out, const std::string& v) { return out += quote_string(v), true; }
bool write_value(std::string& out, const std::optional<std::string>& v) {
  if (v) out += quote_string(*v);
  return v.has_value();  // an unset optional key is left out
}
bool write_value(std::string& out, const std::vector<int>& v) {
  out += '[';
  for (std::size_t i = 0; i < v.size(); ++i) {
    if (i > 0) out += ", ";
    out += std::to_string(v[i]);
  }
  out += ']';
  return true;
}
template <typename E>
  requires std::is_enum_v<E>
bool write_value(std::string& out, E v) {
  return out += quote_string(to_string(v)), true;
}

// ---- the key table: every scalar and list key, in file order ----

struct field {
  std::string_view section;
  std::string_view name;
  void (*from_node)(server_config&, const toml::node&);
  void (*from_text)(server_config&, std::string_view);
  bool (*write)(const server_config&, std::string&);  // appends the TOML value; false: nothing to write

  [[nodiscard]] std::string key() const { return std::string(section) + "." + std::string(name); }
};

template <auto Section, auto Member>
[[nodiscard]] constexpr field make_field(std::string_view section, std::string_view name) {
  return field{
      section, name,
      [](server_config& c, const toml::node& n) { read_node(n, (c.*Section).*Member); },
      [](server_config& c, std::string_view v) { read_text(v, (c.*Section).*Member); },
      [](const server_config& c, std::string& out) { return write_value(out, (c.*Section).*Member); },
  };
}

using S = server_config;
constexpr std::array fields{
    make_field<&S::model, &model_settings::path>("model", "path"),
    make_field<&S::model, &model_settings::dtype>("model", "dtype"),
    make_field<&S::server, &server_settings::listen>("server", "listen"),
    make_field<&S::server, &server_settings::admin_listen>("server", "admin_listen"),
    make_field<&S::server, &server_settings::admin_token_file>("server", "admin_token_file"),
    make_field<&S::engine, &engine_settings::device>("engine", "device"),
    make_field<&S::engine, &engine_settings::gpus>("engine", "gpus"),
    make_field<&S::engine, &engine_settings::max_batch_tokens>("engine", "max_batch_tokens"),
    make_field<&S::engine, &engine_settings::max_running>("engine", "max_running"),
    make_field<&S::engine, &engine_settings::page_size>("engine", "page_size"),
    make_field<&S::engine, &engine_settings::kv_cache_fraction>("engine", "kv_cache_fraction"),
    make_field<&S::engine, &engine_settings::max_queue_per_adapter>("engine", "max_queue_per_adapter"),
    make_field<&S::engine, &engine_settings::max_queue>("engine", "max_queue"),
    make_field<&S::engine, &engine_settings::max_context>("engine", "max_context"),
    make_field<&S::adapters_cache, &adapter_cache_settings::host_cache_mb>("adapters_cache", "host_cache_mb"),
    make_field<&S::adapters_cache, &adapter_cache_settings::max_gpu_adapters>("adapters_cache", "max_gpu_adapters"),
    make_field<&S::adapters_cache, &adapter_cache_settings::max_lora_rank>("adapters_cache", "max_lora_rank"),
    make_field<&S::mode, &mode_settings::merge_enabled>("mode", "merge_enabled"),
    make_field<&S::mode, &mode_settings::initial_right_threshold>("mode", "initial_right_threshold"),
    make_field<&S::mode, &mode_settings::initial_left_threshold>("mode", "initial_left_threshold"),
    make_field<&S::mode, &mode_settings::aimd_step>("mode", "aimd_step"),
    make_field<&S::mode, &mode_settings::aimd_factor>("mode", "aimd_factor"),
};
constexpr std::array<std::string_view, 5> sections{"model", "server", "engine", "adapters_cache", "mode"};
constexpr std::array<std::string_view, 6> top_level{"model", "server", "engine", "adapters_cache", "mode", "adapters"};

[[nodiscard]] const field* find_field(std::string_view section, std::string_view name) noexcept {
  for (const field& f : fields) {
    if (f.section == section && f.name == name) return &f;
  }
  return nullptr;
}

[[nodiscard]] bool is_section(std::string_view name) noexcept {
  return std::find(sections.begin(), sections.end(), name) != sections.end();
}

[[nodiscard]] std::size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<std::size_t> row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diag = row[0];
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      const std::size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

/// " (did you mean engine.max_batch_tokens?)" for a near miss of a known key, else "".
[[nodiscard]] std::string suggestion(std::string_view key) {
  std::string best;
  std::size_t best_d = 3;  // at most two edits away
  for (const field& f : fields) {
    const std::string k = f.key();
    const std::size_t d = edit_distance(key, k);
    if (d < best_d) best_d = d, best = k;
  }
  for (const std::string_view s : top_level) {
    const std::size_t d = edit_distance(key, s);
    if (d < best_d) best_d = d, best = std::string(s);
  }
  return best.empty() ? std::string() : " (did you mean " + best + "?)";
}

// ---- TOML file reading ----

/// Where a parse is: names the source and the line in messages.
struct reader {
  const std::string& source;

  [[nodiscard]] static std::string at_line(const toml::node& n) {
    const auto line = n.source().begin.line;
    return line > 0 ? " at line " + std::to_string(line) : std::string();
  }

  [[noreturn]] void unknown(const std::string& key, const toml::node& n) const {
    const char* what = n.is_table() ? "unknown table " : "unknown key ";
    throw config_error(key, source + ": " + what + key + at_line(n) + suggestion(key));
  }

  [[noreturn]] void bad(const std::string& key, const std::string& detail, const toml::node& n) const {
    throw config_error(key, source + ": " + key + ": " + detail + at_line(n));
  }

  void field_value(server_config& c, const field& f, const toml::node& n) const {
    try {
      f.from_node(c, n);
    } catch (const value_error& e) {
      bad(f.key() + e.suffix, e.detail, n);
    }
  }

  void section(server_config& c, std::string_view name, const toml::node& n) const {
    const toml::table* t = n.as_table();
    if (t == nullptr) bad(std::string(name), "expected a table, got " + std::string(node_kind(n)), n);
    for (auto&& [k, v] : *t) {
      const field* f = find_field(name, k.str());
      if (f == nullptr) unknown(std::string(name) + "." + std::string(k.str()), v);
      field_value(c, *f, v);
    }
  }

  void adapters(server_config& c, const toml::node& n) const {
    const toml::array* a = n.as_array();
    if (a == nullptr) bad("adapters", "expected an array of tables ([[adapters]]), got " + std::string(node_kind(n)), n);
    for (std::size_t i = 0; i < a->size(); ++i) {
      const toml::node& el = *a->get(i);
      const std::string at = "adapters[" + std::to_string(i) + "]";
      const toml::table* t = el.as_table();
      if (t == nullptr) bad(at, "expected a table, got " + std::string(node_kind(el)), el);
      adapter_spec spec;
      bool has_name = false, has_path = false;
      for (auto&& [k, v] : *t) {
        std::string* target = nullptr;
        if (k.str() == "name") target = &spec.name, has_name = true;
        else if (k.str() == "path") target = &spec.path, has_path = true;
        else unknown(at + "." + std::string(k.str()), v);
        if (!v.is_string()) bad(at + "." + std::string(k.str()), "expected a string, got " + std::string(node_kind(v)), v);
        *target = v.as_string()->get();
      }
      if (!has_name) bad(at + ".name", "missing (every [[adapters]] entry needs name and path)", el);
      if (!has_path) bad(at + ".path", "missing (every [[adapters]] entry needs name and path)", el);
      c.adapters.push_back(std::move(spec));
    }
  }
};

}  // namespace

server_config parse_toml(std::string_view text, const std::string& source) {
  toml::table root;
  try {
    root = toml::parse(text, source);
  } catch (const toml::parse_error& e) {
    const auto& b = e.source().begin;
    throw config_error("", source + ":" + std::to_string(b.line) + ":" + std::to_string(b.column) + ": " +
                               std::string(e.description()));
  }
  server_config c;
  const reader r{source};
  for (auto&& [k, v] : root) {
    const std::string_view name = k.str();
    if (name == "adapters") r.adapters(c, v);
    else if (is_section(name)) r.section(c, name, v);
    else r.unknown(std::string(name), v);
  }
  return c;
}

server_config load_toml_file(const std::filesystem::path& file) {
  const std::string name = file.string();
  std::error_code ec;
  const auto st = std::filesystem::status(file, ec);
  if (ec || !std::filesystem::exists(st))
    throw config_error("", "cannot read config file " + name + ": " + (ec ? ec.message() : "no such file"));
  if (!std::filesystem::is_regular_file(st)) throw config_error("", "cannot read config file " + name + ": not a regular file");
  std::ifstream in(file, std::ios::binary);
  if (!in) throw config_error("", "cannot read config file " + name + ": open failed");
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) throw config_error("", "cannot read config file " + name + ": read failed");
  return parse_toml(text.str(), name);
}

void apply_override(server_config& c, std::string_view assignment) {
  const auto eq = assignment.find('=');
  if (eq == std::string_view::npos)
    throw config_error("", "override " + quote_string(assignment) + ": expected KEY=VALUE (e.g. engine.page_size=32)");
  const std::string key(trim(assignment.substr(0, eq)));
  const std::string_view value = assignment.substr(eq + 1);

  constexpr std::string_view adapters_prefix = "adapters.";
  if (key.starts_with(adapters_prefix)) {
    // adapters.NAME=PATH registers NAME, or repoints an adapter of that name from the file.
    const std::string name = key.substr(adapters_prefix.size());
    const auto it = std::find_if(c.adapters.begin(), c.adapters.end(), [&](const adapter_spec& a) { return a.name == name; });
    if (it != c.adapters.end()) it->path = std::string(value);
    else c.adapters.push_back({name, std::string(value)});
    return;
  }

  const auto dot = key.find('.');
  const field* f = dot == std::string::npos ? nullptr : find_field(std::string_view(key).substr(0, dot), std::string_view(key).substr(dot + 1));
  if (f == nullptr) {
    const std::string hint = key == "adapters" ? " (use adapters.NAME=PATH)" : suggestion(key);
    throw config_error(key, "override: unknown key " + key + hint);
  }
  try {
    f->from_text(c, value);
  } catch (const value_error& e) {
    throw config_error(key + e.suffix, "override: " + key + e.suffix + ": " + e.detail);
  }
}

namespace {

[[noreturn]] void invalid(const std::string& key, const std::string& rule) { throw config_error(key, key + ": " + rule); }

template <typename T>
void check_at_least(const std::string& key, T v, T lo) {
  if (v < lo) invalid(key, "must be at least " + std::to_string(lo) + ", got " + std::to_string(v));
}

template <typename T>
void check_in(const std::string& key, T v, T lo, T hi) {
  if (v < lo || v > hi)
    invalid(key, "must be in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], got " + std::to_string(v));
}

/// lo < v <= hi; NaN fails.
void check_half_open(const std::string& key, double v, double lo, double hi) {
  if (!(v > lo && v <= hi))
    invalid(key, "must be in (" + format_double(lo) + ", " + format_double(hi) + "], got " + format_double(v));
}

[[nodiscard]] bool valid_adapter_name(std::string_view s) noexcept {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char ch) {
    return (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '.' || ch == '_' || ch == '-';
  });
}

void validate_listen(const std::string& endpoint) {
  const std::string key = "server.listen";
  for (const std::string_view scheme : {"tcp://", "ipc://", "inproc://"}) {
    if (!endpoint.starts_with(scheme)) continue;
    const std::string_view rest = std::string_view(endpoint).substr(scheme.size());
    if (rest.empty()) invalid(key, "endpoint " + quote_string(endpoint) + " names no address after " + std::string(scheme));
    if (scheme == "tcp://" && rest.find(':') == std::string_view::npos)
      invalid(key, "tcp endpoint " + quote_string(endpoint) + " needs a port (tcp://HOST:PORT)");
    return;
  }
  invalid(key, "ZeroMQ endpoint must start with tcp://, ipc:// or inproc://, got " + quote_string(endpoint));
}

void validate_admin_listen(const std::string& address) {
  const std::string key = "server.admin_listen";
  const auto colon = address.rfind(':');
  if (colon == std::string::npos || colon == 0) invalid(key, "expected HOST:PORT, got " + quote_string(address));
  const std::string_view port = std::string_view(address).substr(colon + 1);
  int p = 0;
  const auto [ptr, ec] = std::from_chars(port.data(), port.data() + port.size(), p);
  if (port.empty() || ec != std::errc{} || ptr != port.data() + port.size() || p < 1 || p > 65535)
    invalid(key, "port must be an integer in [1, 65535], got " + quote_string(address));
}

}  // namespace

void validate(const server_config& c) {
  if (c.model.path.empty()) invalid("model.path", "required: the base model directory (set it in [model] or with model.path=DIR)");

  for (std::size_t i = 0; i < c.adapters.size(); ++i) {
    const adapter_spec& a = c.adapters[i];
    const std::string at = "adapters[" + std::to_string(i) + "]";
    if (!valid_adapter_name(a.name))
      invalid(at + ".name", "adapter name must be non-empty and match [A-Za-z0-9._-]+, got " + quote_string(a.name));
    if (a.path.empty()) invalid(at + ".path", "adapter " + quote_string(a.name) + " needs a directory");
    for (std::size_t j = 0; j < i; ++j) {
      if (c.adapters[j].name == a.name)
        invalid(at + ".name", "duplicate adapter name " + quote_string(a.name) + " (also adapters[" + std::to_string(j) + "])");
    }
  }

  validate_listen(c.server.listen);
  validate_admin_listen(c.server.admin_listen);
  if (c.server.admin_token_file && c.server.admin_token_file->empty())
    invalid("server.admin_token_file", "must not be empty (leave the key out for no token file)");

  const engine_settings& e = c.engine;
  if (e.device == device_kind::cuda) {
    if (e.gpus.empty()) invalid("engine.gpus", "must list at least one GPU when engine.device is \"cuda\"");
    for (std::size_t i = 0; i < e.gpus.size(); ++i) {
      if (e.gpus[i] < 0) invalid("engine.gpus", "GPU ordinals must be non-negative, got " + std::to_string(e.gpus[i]));
      for (std::size_t j = 0; j < i; ++j) {
        if (e.gpus[j] == e.gpus[i]) invalid("engine.gpus", "GPU " + std::to_string(e.gpus[i]) + " is listed twice");
      }
    }
  }
  check_at_least("engine.max_batch_tokens", e.max_batch_tokens, 1);
  check_at_least("engine.max_running", e.max_running, 1);
  check_in("engine.page_size", e.page_size, 1, 1024);
  check_half_open("engine.kv_cache_fraction", e.kv_cache_fraction, 0.0, 1.0);
  check_at_least("engine.max_queue_per_adapter", e.max_queue_per_adapter, 1);
  check_at_least("engine.max_queue", e.max_queue, 1);
  if (e.max_running > e.max_queue)
    invalid("engine.max_running", "must not exceed engine.max_queue (" + std::to_string(e.max_queue) + "), got " +
                                      std::to_string(e.max_running));
  check_at_least("engine.max_context", e.max_context, 0);

  const adapter_cache_settings& a = c.adapters_cache;
  // The upper bound keeps host_cache_mb * 2^20 bytes inside an int64.
  check_in<std::int64_t>("adapters_cache.host_cache_mb", a.host_cache_mb, 1, std::int64_t{1} << 40);
  check_at_least("adapters_cache.max_gpu_adapters", a.max_gpu_adapters, 1);
  check_in("adapters_cache.max_lora_rank", a.max_lora_rank, 1, 256);

  const mode_settings& m = c.mode;
  check_half_open("mode.initial_right_threshold", m.initial_right_threshold, 0.0, 4.0);
  check_half_open("mode.initial_left_threshold", m.initial_left_threshold, 0.0, 4.0);
  if (!(m.initial_left_threshold < m.initial_right_threshold))
    invalid("mode.initial_left_threshold", "must be below mode.initial_right_threshold (" +
                                               format_double(m.initial_right_threshold) + "), got " +
                                               format_double(m.initial_left_threshold));
  if (!(m.aimd_step > 0.0 && std::isfinite(m.aimd_step)))
    invalid("mode.aimd_step", "must be a positive finite number, got " + format_double(m.aimd_step));
  if (!(m.aimd_factor > 1.0 && std::isfinite(m.aimd_factor)))
    invalid("mode.aimd_factor", "must be a finite number above 1, got " + format_double(m.aimd_factor));
}

std::string to_toml(const server_config& c) {
  std::string out = "# loraplex server configuration; docs/configuration.md describes every key.\n";
  std::string_view current;
  for (const field& f : fields) {
    std::string value;
    if (!f.write(c, value)) continue;
    if (f.section != current) {
      current = f.section;
      out += "\n[";
      out += current;
      out += "]\n";
    }
    out += f.name;
    out += " = ";
    out += value;
    out += '\n';
  }
  for (const adapter_spec& a : c.adapters) {
    out += "\n[[adapters]]\nname = " + quote_string(a.name) + "\npath = " + quote_string(a.path) + "\n";
  }
  return out;
}

std::vector<std::string> key_names() {
  std::vector<std::string> out;
  out.reserve(fields.size());
  for (const field& f : fields) out.push_back(f.key());
  return out;
}

}  // namespace loraplex::config
