#define BOOST_TEST_MODULE test_safetensors
#include <boost/test/unit_test.hpp>

#include <cstring>
#include <functional>

#include <nlohmann/json.hpp>

#include "model/safetensors.hpp"
#include "test_util.hpp"

using namespace loraplex;
using namespace loraplex::model;
using loraplex::test::check_error;
using loraplex::test::read_file;
using loraplex::test::temp_dir;
using loraplex::test::write_file;

namespace {

const std::filesystem::path data_dir = LORAPLEX_TEST_DATA;

/// Header length field of a file's bytes.
[[nodiscard]] std::uint64_t header_length(const std::string& bytes) {
  std::uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(bytes[static_cast<std::size_t>(i)]);
  return n;
}

[[nodiscard]] std::string u64_le(std::uint64_t n) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[static_cast<std::size_t>(i)] = static_cast<char>((n >> (8 * i)) & 0xff);
  return s;
}

/// Replaces a file's header with `header` (verbatim, then space-padded to 8), keeping its data section.
void replace_header_text(const std::filesystem::path& p, std::string header) {
  const std::string bytes = read_file(p);
  const std::string data = bytes.substr(8 + header_length(bytes));
  header.append((8 - header.size() % 8) % 8, ' ');
  write_file(p, u64_le(header.size()) + header + data);
}

/// Edits a written file's header JSON in place: the crafted corruption cases start from a valid file.
void edit_header(const std::filesystem::path& p, const std::function<void(nlohmann::json&)>& edit) {
  const std::string bytes = read_file(p);
  auto header = nlohmann::json::parse(bytes.substr(8, header_length(bytes)));
  edit(header);
  replace_header_text(p, header.dump());
}

/// A valid file with two F32 tensors: a [2, 2] at bytes 0..16 and b [4] at bytes 16..32.
std::filesystem::path write_two(const std::filesystem::path& dir, const std::string& file = "two.safetensors") {
  static const float a[4] = {1, 2, 3, 4};
  static const float b[4] = {5, 6, 7, 8};
  const auto p = dir / file;
  write_safetensors(p, {{"a", dtype::f32, {2, 2}, a}, {"b", dtype::f32, {4}, b}}, {{"format", "pt"}});
  return p;
}

}  // namespace

BOOST_AUTO_TEST_CASE(roundtrip_f32_f16_bf16_with_metadata) {
  temp_dir tmp;
  const float f32[6] = {0.5f, -1.25f, 3.0f, 1e-3f, -7.5f, 42.0f};
  std::uint16_t f16[4];
  std::uint16_t bf16[3];
  for (int i = 0; i < 4; ++i) f16[i] = f32_to_f16(f32[i]);
  for (int i = 0; i < 3; ++i) bf16[i] = f32_to_bf16(f32[i + 3]);
  const auto p = tmp.path() / "rt.safetensors";
  write_safetensors(p,
                    {{"w.f32", dtype::f32, {2, 3}, f32},
                     {"w.f16", dtype::f16, {4}, f16},
                     {"w.bf16", dtype::bf16, {3, 1}, bf16},
                     {"w.empty", dtype::f32, {0, 5}, nullptr}},
                    {{"format", "pt"}, {"note", "hello"}});
  BOOST_CHECK(!std::filesystem::exists(tmp.path() / "rt.safetensors.tmp"));

  const std::string bytes = read_file(p);
  BOOST_CHECK_EQUAL(header_length(bytes) % 8, 0u);
  BOOST_CHECK_EQUAL(bytes.size(), 8 + header_length(bytes) + 24 + 8 + 6);

  auto f = safetensors_file::open(p);
  BOOST_CHECK_EQUAL(f.tensors().size(), 4u);
  BOOST_CHECK_EQUAL(f.metadata().at("format"), "pt");
  BOOST_CHECK_EQUAL(f.metadata().at("note"), "hello");
  BOOST_CHECK(f.find("missing") == nullptr);

  const tensor_view* t = f.find("w.f32");
  BOOST_REQUIRE(t);
  BOOST_CHECK(t->type == dtype::f32);
  BOOST_CHECK_EQUAL(t->shape_string(), "[2, 3]");
  BOOST_CHECK_EQUAL(t->numel(), 6);
  BOOST_REQUIRE_EQUAL(t->bytes, sizeof f32);
  BOOST_CHECK(std::memcmp(t->data, f32, sizeof f32) == 0);

  t = f.find("w.f16");
  BOOST_REQUIRE(t);
  BOOST_CHECK(t->type == dtype::f16);
  BOOST_REQUIRE_EQUAL(t->bytes, sizeof f16);
  BOOST_CHECK(std::memcmp(t->data, f16, sizeof f16) == 0);
  for (int i = 0; i < 4; ++i) {
    BOOST_CHECK_EQUAL(load_as_f32(t->data, t->type, static_cast<std::size_t>(i)), f16_to_f32(f16[i]));
  }

  t = f.find("w.bf16");
  BOOST_REQUIRE(t);
  BOOST_CHECK(t->type == dtype::bf16);
  BOOST_CHECK_EQUAL(t->shape_string(), "[3, 1]");
  BOOST_REQUIRE_EQUAL(t->bytes, sizeof bf16);
  BOOST_CHECK(std::memcmp(t->data, bf16, sizeof bf16) == 0);

  t = f.find("w.empty");
  BOOST_REQUIRE(t);
  BOOST_CHECK_EQUAL(t->numel(), 0);
  BOOST_CHECK_EQUAL(t->bytes, 0u);

  // Moving keeps the mapping and the views valid.
  safetensors_file moved = std::move(f);
  BOOST_REQUIRE(moved.find("w.f32"));
  BOOST_CHECK(std::memcmp(moved.find("w.f32")->data, f32, sizeof f32) == 0);

  // Overwriting an existing file replaces it.
  write_safetensors(p, {{"only", dtype::f32, {1}, f32}});
  const auto again = safetensors_file::open(p);
  BOOST_CHECK_EQUAL(again.tensors().size(), 1u);
  BOOST_CHECK(again.metadata().empty());
}

BOOST_AUTO_TEST_CASE(write_failure_names_the_path_and_leaves_nothing) {
  temp_dir tmp;
  const float x = 1.0f;
  const auto p = tmp.path() / "no-such-dir" / "w.safetensors";
  check_error<std::runtime_error>("write into a missing directory",
                                  [&] { write_safetensors(p, {{"x", dtype::f32, {1}, &x}}); }, {p.string()});
  BOOST_CHECK(!std::filesystem::exists(p));
  check_error<std::runtime_error>("repeated tensor name",
                                  [&] {
                                    write_safetensors(tmp.path() / "d.safetensors",
                                                      {{"x", dtype::f32, {1}, &x}, {"x", dtype::f32, {1}, &x}});
                                  },
                                  {"d.safetensors", "'x'"});
  BOOST_CHECK(!std::filesystem::exists(tmp.path() / "d.safetensors.tmp"));
}

BOOST_AUTO_TEST_CASE(fixture_base_checkpoint_opens) {
  const auto f = safetensors_file::open(data_dir / "tiny-llama/base/model.safetensors");
  const tensor_view* q = f.find("model.layers.0.self_attn.q_proj.weight");
  BOOST_REQUIRE(q);
  BOOST_CHECK(q->type == dtype::f32);
  BOOST_CHECK_EQUAL(q->shape_string(), "[128, 128]");
  BOOST_CHECK_EQUAL(q->bytes, 128u * 128u * 4u);

  const auto c = safetensors_checkpoint::open_dir(data_dir / "tiny-llama/base");
  BOOST_CHECK_EQUAL(c.names().size(), f.tensors().size());
  BOOST_CHECK_EQUAL(c.get("lm_head.weight").shape_string(), "[512, 128]");
  BOOST_CHECK_EQUAL(c.get("model.layers.2.self_attn.k_proj.weight").shape_string(), "[64, 128]");
  check_error<format_error>("get of an absent tensor", [&] { (void)c.get("model.nope.weight"); },
                            {"model.nope.weight", "tiny-llama/base"});
}

BOOST_AUTO_TEST_CASE(sharded_bf16_checkpoint_matches_f32_rounded) {
  const auto f32 = safetensors_checkpoint::open_dir(data_dir / "tiny-llama/base");
  const auto bf16 = safetensors_checkpoint::open_dir(data_dir / "tiny-llama/base-bf16");
  BOOST_CHECK_EQUAL(bf16.names().size(), f32.names().size());
  std::size_t checked = 0;
  for (const auto& name : f32.names()) {
    const tensor_view* t = bf16.find(name);
    BOOST_REQUIRE_MESSAGE(t, name << " missing from the bf16 checkpoint");
    const tensor_view& ref = f32.get(name);
    BOOST_CHECK_MESSAGE(t->type == dtype::bf16, name << " is not BF16");
    BOOST_CHECK_MESSAGE(t->shape == ref.shape, name << ": " << t->shape_string() << " vs " << ref.shape_string());
    // Every element of every tensor: cheap at this size, and one wrong shard offset shows up at once.
    std::size_t mismatches = 0;
    for (std::size_t i = 0; i < static_cast<std::size_t>(ref.numel()); ++i) {
      float v;
      std::memcpy(&v, ref.data + 4 * i, 4);
      std::uint16_t h;
      std::memcpy(&h, t->data + 2 * i, 2);
      mismatches += h != f32_to_bf16(v);
    }
    BOOST_CHECK_MESSAGE(mismatches == 0, name << ": " << mismatches << " elements differ from f32_to_bf16");
    ++checked;
  }
  BOOST_CHECK_GT(checked, 20u);
}

BOOST_AUTO_TEST_CASE(corrupt_files_name_file_and_tensor) {
  temp_dir tmp;
  auto open = [](const std::filesystem::path& p) { return [p] { (void)safetensors_file::open(p); }; };

  {  // truncated: the last bytes of b's data are cut
    const auto p = write_two(tmp.path(), "truncated.safetensors");
    const std::string bytes = read_file(p);
    write_file(p, bytes.substr(0, bytes.size() - 8));
    check_error<format_error>("truncated", open(p), {p.string(), "'b'", "outside the data section"});
  }
  {  // header length past the end of the file
    const auto p = write_two(tmp.path(), "hlen.safetensors");
    std::string bytes = read_file(p);
    bytes.replace(0, 8, u64_le(1'000'000));
    write_file(p, bytes);
    check_error<format_error>("header length past the end", open(p), {p.string(), "header length 1000000"});
  }
  {  // header length above the 100 MiB limit
    const auto p = write_two(tmp.path(), "hbig.safetensors");
    std::string bytes = read_file(p);
    bytes.replace(0, 8, u64_le(std::uint64_t{1} << 40));
    write_file(p, bytes);
    check_error<format_error>("header length over 100 MiB", open(p), {p.string(), "100 MiB"});
  }
  {  // overlapping offsets (sizes still consistent)
    const auto p = write_two(tmp.path(), "overlap.safetensors");
    edit_header(p, [](nlohmann::json& h) {
      h["b"]["data_offsets"] = {8, 24};
    });
    check_error<format_error>("overlapping offsets", open(p), {p.string(), "'a'", "'b'", "overlaps"});
  }
  {  // dtype / size mismatch: shape says 5 floats, offsets hold 4
    const auto p = write_two(tmp.path(), "size.safetensors");
    edit_header(p, [](nlohmann::json& h) { h["b"]["shape"] = {5}; });
    check_error<format_error>("shape/size mismatch", open(p), {p.string(), "'b'", "20", "16"});
    edit_header(p, [](nlohmann::json& h) {
      h["b"]["shape"] = {4};
      h["b"]["dtype"] = "BF16";
    });
    check_error<format_error>("dtype/size mismatch", open(p), {p.string(), "'b'", "BF16"});
  }
  {  // header that is not JSON, and JSON that is not an object
    const auto p = write_two(tmp.path(), "notjson.safetensors");
    replace_header_text(p, "{\"a\": {\"dtype\": \"F32\", this is not json");
    check_error<format_error>("non-JSON header", open(p), {p.string(), "not valid JSON"});
    replace_header_text(p, "[1, 2, 3]");
    check_error<format_error>("non-object header", open(p), {p.string(), "not a JSON object"});
  }
  {  // offsets outside the data section, and reversed offsets
    const auto p = write_two(tmp.path(), "outside.safetensors");
    edit_header(p, [](nlohmann::json& h) {
      h["b"]["shape"] = {8};
      h["b"]["data_offsets"] = {16, 48};
    });
    check_error<format_error>("offsets outside the data", open(p), {p.string(), "'b'", "outside the data section"});
    edit_header(p, [](nlohmann::json& h) {
      h["b"]["shape"] = {0};
      h["b"]["data_offsets"] = {32, 16};
    });
    check_error<format_error>("reversed offsets", open(p), {p.string(), "'b'", "begin > end"});
  }
  {  // files shorter than the length field
    const auto p = tmp.path() / "short.safetensors";
    write_file(p, "abcde");
    check_error<format_error>("5-byte file", open(p), {p.string(), "shorter than the 8-byte"});
    write_file(p, "");
    check_error<format_error>("empty file", open(p), {p.string(), "shorter than the 8-byte"});
  }
  for (const char* dt : {"I8", "U8", "F64", "BOOL", "F8_E4M3", "I64"}) {  // unsupported dtypes
    const auto p = write_two(tmp.path(), std::string("dtype-") + dt + ".safetensors");
    edit_header(p, [&](nlohmann::json& h) { h["b"]["dtype"] = dt; });
    check_error<unsupported_error>(std::string("dtype ") + dt, open(p), {p.string(), "'b'", dt});
  }
  {  // entries with missing or mistyped fields, negative dimensions, bad metadata
    const auto p = write_two(tmp.path(), "fields.safetensors");
    edit_header(p, [](nlohmann::json& h) { h["b"].erase("dtype"); });
    check_error<format_error>("missing dtype", open(p), {p.string(), "'b'", "dtype"});
    edit_header(p, [](nlohmann::json& h) {
      h["b"]["dtype"] = "F32";
      h["b"]["shape"] = "4";
    });
    check_error<format_error>("string shape", open(p), {p.string(), "'b'", "shape"});
    edit_header(p, [](nlohmann::json& h) {
      h["b"]["shape"] = {-4};
    });
    check_error<format_error>("negative dimension", open(p), {p.string(), "'b'", "negative"});
    edit_header(p, [](nlohmann::json& h) {
      h["b"]["shape"] = {4};
      h["b"]["data_offsets"] = {16};
    });
    check_error<format_error>("one offset", open(p), {p.string(), "'b'", "data_offsets"});
    edit_header(p, [](nlohmann::json& h) {
      h["b"]["data_offsets"] = {16, 32};
      h["__metadata__"]["n"] = 3;
    });
    check_error<format_error>("non-string metadata", open(p), {p.string(), "__metadata__"});
    edit_header(p, [](nlohmann::json& h) { h["__metadata__"].erase("n"); });
    BOOST_CHECK_NO_THROW((void)safetensors_file::open(p));  // the edits themselves keep a valid file valid
  }
  check_error<format_error>("absent file", open(tmp.path() / "absent.safetensors"), {"absent.safetensors"});
}

BOOST_AUTO_TEST_CASE(sharded_index_checks) {
  temp_dir tmp;
  const auto& dir = tmp.path();
  const float x[4] = {1, 2, 3, 4};
  write_safetensors(dir / "s1.safetensors", {{"a", dtype::f32, {4}, x}});
  write_safetensors(dir / "s2.safetensors", {{"b", dtype::f32, {2, 2}, x}});
  // A model.safetensors beside the index must lose to the index.
  write_safetensors(dir / "model.safetensors", {{"z", dtype::f32, {1}, x}});
  const auto index = dir / "model.safetensors.index.json";
  auto write_index = [&](const nlohmann::json& wm) {
    write_file(index, nlohmann::json{{"metadata", {{"total_size", 32}}}, {"weight_map", wm}}.dump());
  };

  write_index({{"a", "s1.safetensors"}, {"b", "s2.safetensors"}});
  {
    const auto c = safetensors_checkpoint::open_dir(dir);
    BOOST_CHECK((c.names() == std::vector<std::string>{"a", "b"}));
    BOOST_CHECK(c.find("z") == nullptr);
    BOOST_CHECK_EQUAL(c.get("b").shape_string(), "[2, 2]");
    BOOST_CHECK_EQUAL(c.source(), dir);
  }

  write_index({{"a", "s1.safetensors"}, {"b", "s3.safetensors"}});
  check_error<format_error>("index names a missing shard", [&] { (void)safetensors_checkpoint::open_dir(dir); },
                            {"s3.safetensors", "'b'", "does not exist"});

  write_index({{"a", "s1.safetensors"}, {"b", "s2.safetensors"}, {"c", "s1.safetensors"}});
  check_error<format_error>("index maps a tensor to a shard that lacks it",
                            [&] { (void)safetensors_checkpoint::open_dir(dir); },
                            {"model.safetensors.index.json", "'c'", "s1.safetensors", "does not contain"});

  write_index({{"a", "../s1.safetensors"}});
  check_error<format_error>("shard outside the directory", [&] { (void)safetensors_checkpoint::open_dir(dir); },
                            {"../s1.safetensors"});

  write_file(index, "{\"metadata\": {}}");
  check_error<format_error>("index without weight_map", [&] { (void)safetensors_checkpoint::open_dir(dir); },
                            {"model.safetensors.index.json", "weight_map"});
  write_file(index, "{not json");
  check_error<format_error>("index that is not JSON", [&] { (void)safetensors_checkpoint::open_dir(dir); },
                            {"model.safetensors.index.json", "JSON"});

  // Without the index the single file is used; with neither, the message says what was looked for.
  std::filesystem::remove(index);
  BOOST_CHECK((safetensors_checkpoint::open_dir(dir).names() == std::vector<std::string>{"z"}));
  std::filesystem::remove(dir / "model.safetensors");
  check_error<format_error>("no checkpoint files", [&] { (void)safetensors_checkpoint::open_dir(dir); },
                            {dir.string(), "model.safetensors.index.json", "model.safetensors"});

  const auto single = safetensors_checkpoint::open_file(dir / "s2.safetensors");
  BOOST_CHECK((single.names() == std::vector<std::string>{"b"}));
}
