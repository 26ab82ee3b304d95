#include "model/safetensors.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <optional>
#include <set>
#include <utility>

#include <nlohmann/json.hpp>

namespace loraplex::model {

namespace {

/// A header this large is not a real checkpoint; refusing it keeps a corrupt length from allocating gigabytes.
constexpr std::uint64_t max_header_bytes = 100ull * 1024 * 1024;

[[nodiscard]] std::string path_str(const std::filesystem::path& p) { return p.string(); }

[[nodiscard]] std::optional<dtype> dtype_from_safetensors(std::string_view s) noexcept {
  if (s == "F32") return dtype::f32;
  if (s == "F16") return dtype::f16;
  if (s == "BF16") return dtype::bf16;
  return std::nullopt;
}

[[nodiscard]] std::string_view dtype_to_safetensors(dtype t) noexcept {
  switch (t) {
    case dtype::f32: return "F32";
    case dtype::f16: return "F16";
    case dtype::bf16: return "BF16";
  }
  return "?";
}

/// Reads the header's length field; little-endian on every host.
[[nodiscard]] std::uint64_t read_u64_le(const std::byte* p) noexcept {
  std::uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<std::uint64_t>(p[i]);
  return v;
}

/// Offsets of one tensor in the data section, kept for the overlap check after all entries are parsed.
struct extent {
  std::uint64_t begin = 0;
  std::uint64_t end = 0;
  std::size_t tensor = 0;  // index into the parsed tensors
};

}  // namespace

std::int64_t tensor_view::numel() const noexcept {
  std::int64_t n = 1;
  for (std::int64_t d : shape) n *= d;
  return n;
}

std::string tensor_view::shape_string() const {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

safetensors_file::safetensors_file(safetensors_file&& o) noexcept
    : path_(std::move(o.path_)),
      map_(std::exchange(o.map_, nullptr)),
      map_bytes_(std::exchange(o.map_bytes_, 0)),
      tensors_(std::move(o.tensors_)),
      metadata_(std::move(o.metadata_)) {}

safetensors_file& safetensors_file::operator=(safetensors_file&& o) noexcept {
  if (this != &o) {
    if (map_) ::munmap(map_, map_bytes_);
    path_ = std::move(o.path_);
    map_ = std::exchange(o.map_, nullptr);
    map_bytes_ = std::exchange(o.map_bytes_, 0);
    tensors_ = std::move(o.tensors_);
    metadata_ = std::move(o.metadata_);
  }
  return *this;
}

safetensors_file::~safetensors_file() {
  if (map_) ::munmap(map_, map_bytes_);
}

safetensors_file safetensors_file::open(const std::filesystem::path& path) {
  const std::string where = path_str(path);
  safetensors_file f;  // owns the mapping from here on, so every throw below unmaps it
  f.path_ = path;

  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw format_error(where + ": cannot open safetensors file: " + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw format_error(where + ": not a regular file");
  }
  const auto file_bytes = static_cast<std::uint64_t>(st.st_size);
  if (file_bytes < 8) {
    ::close(fd);
    throw format_error(where + ": file is " + std::to_string(file_bytes) +
                       " bytes, shorter than the 8-byte header length of a safetensors file");
  }
  void* m = ::mmap(nullptr, file_bytes, PROT_READ, MAP_PRIVATE, fd, 0);
  const int map_errno = errno;
  ::close(fd);  // the mapping keeps the file alive
  if (m == MAP_FAILED) throw format_error(where + ": mmap failed: " + std::strerror(map_errno));
  f.map_ = m;
  f.map_bytes_ = file_bytes;
  const auto* base = static_cast<const std::byte*>(m);

  const std::uint64_t header_bytes = read_u64_le(base);
  if (header_bytes > max_header_bytes) {
    throw format_error(where + ": header length " + std::to_string(header_bytes) +
                       " exceeds the 100 MiB limit (corrupt file?)");
  }
  if (8 + header_bytes > file_bytes) {
    throw format_error(where + ": header length " + std::to_string(header_bytes) + " runs past the end of the file (" +
                       std::to_string(file_bytes) + " bytes)");
  }
  const std::uint64_t data_bytes = file_bytes - 8 - header_bytes;
  const std::byte* data = base + 8 + header_bytes;

  nlohmann::json header;
  try {
    header = nlohmann::json::parse(reinterpret_cast<const char*>(base + 8),
                                   reinterpret_cast<const char*>(base + 8 + header_bytes));
  } catch (const nlohmann::json::exception& e) {
    throw format_error(where + ": header is not valid JSON: " + e.what());
  }
  if (!header.is_object()) throw format_error(where + ": header is not a JSON object");

  std::vector<extent> extents;
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      if (!entry.is_object()) throw format_error(where + ": __metadata__ is not an object of strings");
      for (const auto& [k, v] : entry.items()) {
        if (!v.is_string()) throw format_error(where + ": __metadata__ value '" + k + "' is not a string");
        f.metadata_[k] = v.get<std::string>();
      }
      continue;
    }
    const std::string what = where + ": tensor '" + name + "'";
    if (!entry.is_object()) throw format_error(what + ": entry is not an object");
    const auto dt = entry.find("dtype");
    const auto sh = entry.find("shape");
    const auto off = entry.find("data_offsets");
    if (dt == entry.end() || !dt->is_string()) throw format_error(what + ": missing or non-string dtype");
    if (sh == entry.end() || !sh->is_array()) throw format_error(what + ": missing or non-array shape");
    if (off == entry.end() || !off->is_array() || off->size() != 2) {
      throw format_error(what + ": data_offsets is missing or not a [begin, end] pair");
    }
    const std::string dtype_str = dt->get<std::string>();
    const auto type = dtype_from_safetensors(dtype_str);
    if (!type) {
      throw unsupported_error(what + ": dtype " + dtype_str +
                              " is not supported (loraplex reads F32, F16 and BF16 safetensors)");
    }

    tensor_view v;
    v.name = name;
    v.type = *type;
    // numel is tracked unsigned with an explicit bound so a crafted shape cannot overflow the size check.
    std::uint64_t numel = 1;
    bool numel_overflow = false;
    for (const auto& d : *sh) {
      if (!d.is_number_integer()) throw format_error(what + ": shape holds a non-integer dimension");
      if (d.is_number_unsigned() ? d.get<std::uint64_t>() > std::uint64_t(std::numeric_limits<std::int64_t>::max())
                                 : d.get<std::int64_t>() < 0) {
        throw format_error(what + ": shape " + sh->dump() + " has a negative or out-of-range dimension");
      }
      const auto dim = d.get<std::int64_t>();
      v.shape.push_back(dim);
      const auto udim = static_cast<std::uint64_t>(dim);
      if (udim != 0 && numel > std::numeric_limits<std::uint64_t>::max() / udim) numel_overflow = true;
      numel *= udim;
    }
    for (const auto& o : *off) {
      if (!o.is_number_integer() || (!o.is_number_unsigned() && o.get<std::int64_t>() < 0)) {
        throw format_error(what + ": data_offsets " + off->dump() + " are not non-negative integers");
      }
    }
    const auto begin = (*off)[0].get<std::uint64_t>();
    const auto end = (*off)[1].get<std::uint64_t>();
    if (begin > end) throw format_error(what + ": data_offsets " + off->dump() + " are not ordered (begin > end)");
    if (end > data_bytes) {
      throw format_error(what + ": data_offsets " + off->dump() + " lie outside the data section (" +
                         std::to_string(data_bytes) + " bytes; truncated file?)");
    }
    const std::uint64_t elem = dtype_size(*type);
    if (numel_overflow || numel > std::numeric_limits<std::uint64_t>::max() / elem || numel * elem != end - begin) {
      throw format_error(what + ": shape " + sh->dump() + " of " + dtype_str + " needs " +
                         (numel_overflow ? std::string("more than 2^64") : std::to_string(numel * elem)) +
                         " bytes but data_offsets " + off->dump() + " span " + std::to_string(end - begin));
    }
    v.data = data + begin;
    v.bytes = static_cast<std::size_t>(end - begin);
    extents.push_back({begin, end, f.tensors_.size()});
    f.tensors_.push_back(std::move(v));
  }

  // Overlap: after sorting by begin, a non-empty tensor must start at or after the furthest end seen so far.
  // Empty tensors occupy no bytes and overlap nothing.
  std::sort(extents.begin(), extents.end(),
            [](const extent& a, const extent& b) { return a.begin != b.begin ? a.begin < b.begin : a.end < b.end; });
  const extent* furthest = nullptr;
  for (const auto& e : extents) {
    if (e.begin == e.end) continue;
    if (furthest && e.begin < furthest->end) {
      throw format_error(where + ": tensor '" + f.tensors_[e.tensor].name + "' (bytes " + std::to_string(e.begin) +
                         ".." + std::to_string(e.end) + ") overlaps tensor '" + f.tensors_[furthest->tensor].name +
                         "' (bytes " + std::to_string(furthest->begin) + ".." + std::to_string(furthest->end) + ")");
    }
    if (!furthest || e.end > furthest->end) furthest = &e;
  }

  std::sort(f.tensors_.begin(), f.tensors_.end(),
            [](const tensor_view& a, const tensor_view& b) { return a.name < b.name; });
  return f;
}

const tensor_view* safetensors_file::find(std::string_view name) const noexcept {
  const auto it = std::lower_bound(tensors_.begin(), tensors_.end(), name,
                                   [](const tensor_view& t, std::string_view n) { return t.name < n; });
  return it != tensors_.end() && it->name == name ? &*it : nullptr;
}

safetensors_checkpoint safetensors_checkpoint::open_file(const std::filesystem::path& file) {
  safetensors_checkpoint c;
  c.source_ = file;
  c.files_.push_back(std::make_unique<safetensors_file>(safetensors_file::open(file)));
  for (const auto& t : c.files_.back()->tensors()) c.index_.emplace(t.name, &t);
  return c;
}

safetensors_checkpoint safetensors_checkpoint::open_dir(const std::filesystem::path& dir) {
  const auto index_path = dir / "model.safetensors.index.json";
  const auto single_path = dir / "model.safetensors";
  std::error_code ec;
  if (!std::filesystem::is_regular_file(index_path, ec)) {
    if (std::filesystem::is_regular_file(single_path, ec)) {
      auto c = open_file(single_path);
      c.source_ = dir;
      return c;
    }
    throw format_error(path_str(dir) + ": no model.safetensors.index.json or model.safetensors found");
  }

  const std::string where = path_str(index_path);
  nlohmann::json index;
  {
    std::ifstream in(index_path, std::ios::binary);
    if (!in) throw format_error(where + ": cannot open");
    try {
      index = nlohmann::json::parse(in);
    } catch (const nlohmann::json::exception& e) {
      throw format_error(where + ": not valid JSON: " + e.what());
    }
  }
  const auto wm = index.is_object() ? index.find("weight_map") : index.end();
  if (wm == index.end() || !wm->is_object()) throw format_error(where + ": missing \"weight_map\" object");
  if (wm->empty()) throw format_error(where + ": \"weight_map\" is empty");

  safetensors_checkpoint c;
  c.source_ = dir;
  std::map<std::string, const safetensors_file*> shards;  // each distinct shard opened once
  for (const auto& [name, shard_json] : wm->items()) {
    if (!shard_json.is_string()) throw format_error(where + ": weight_map entry '" + name + "' is not a string");
    const auto shard = shard_json.get<std::string>();
    auto it = shards.find(shard);
    if (it == shards.end()) {
      const std::filesystem::path rel(shard);
      // NOTE: shards are names inside the checkpoint folder; an index may not reach elsewhere on disk.
      if (shard.empty() || rel.is_absolute() ||
          std::any_of(rel.begin(), rel.end(), [](const std::filesystem::path& p) { return p == ".."; })) {
        throw format_error(where + ": shard '" + shard + "' of tensor '" + name + "' is not a file name in " +
                           path_str(dir));
      }
      const auto shard_path = dir / rel;
      if (!std::filesystem::is_regular_file(shard_path, ec)) {
        throw format_error(where + ": shard file " + path_str(shard_path) + " (for tensor '" + name +
                           "') does not exist");
      }
      c.files_.push_back(std::make_unique<safetensors_file>(safetensors_file::open(shard_path)));
      it = shards.emplace(shard, c.files_.back().get()).first;
    }
    const tensor_view* t = it->second->find(name);
    if (!t) {
      throw format_error(where + ": maps tensor '" + name + "' to shard " + path_str(it->second->path()) +
                         ", which does not contain it");
    }
    c.index_.emplace(name, t);
  }
  return c;
}

const tensor_view* safetensors_checkpoint::find(std::string_view name) const noexcept {
  const auto it = index_.find(name);
  return it == index_.end() ? nullptr : it->second;
}

const tensor_view& safetensors_checkpoint::get(std::string_view name) const {
  if (const tensor_view* t = find(name)) return *t;
  throw format_error("tensor '" + std::string(name) + "' not found in " + path_str(source_));
}

std::vector<std::string> safetensors_checkpoint::names() const {
  std::vector<std::string> out;
  out.reserve(index_.size());
  for (const auto& [name, t] : index_) out.push_back(name);
  return out;
}

void write_safetensors(const std::filesystem::path& path, const std::vector<tensor_to_write>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  const std::string where = path_str(path);
  // ordered_json keeps the tensors in the caller's order in the header, matching the data layout.
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    auto& m = header["__metadata__"] = nlohmann::ordered_json::object();
    for (const auto& [k, v] : metadata) m[k] = v;
  }
  std::set<std::string> seen;
  std::vector<std::size_t> sizes;
  std::uint64_t offset = 0;
  for (const auto& t : tensors) {
    if (t.name == "__metadata__" || !seen.insert(t.name).second) {
      throw std::runtime_error(where + ": cannot write tensor name '" + t.name + "' (reserved or repeated)");
    }
    std::uint64_t numel = 1;
    for (std::int64_t d : t.shape) {
      if (d < 0) throw std::runtime_error(where + ": tensor '" + t.name + "' has a negative dimension");
      numel *= static_cast<std::uint64_t>(d);
    }
    const std::uint64_t bytes = numel * dtype_size(t.type);
    if (bytes && !t.data) throw std::runtime_error(where + ": tensor '" + t.name + "' has no data");
    header[t.name] = {{"dtype", std::string(dtype_to_safetensors(t.type))},
                      {"shape", t.shape},
                      {"data_offsets", {offset, offset + bytes}}};
    sizes.push_back(static_cast<std::size_t>(bytes));
    offset += bytes;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // keeps the data section 8-byte aligned

  auto tmp = path;
  tmp += ".tmp";
  std::FILE* out = std::fopen(tmp.c_str(), "wb");
  if (!out) throw std::runtime_error(where + ": cannot create " + path_str(tmp) + ": " + std::strerror(errno));
  // The first failing call's errno is the one worth reporting.
  int err = 0;
  const auto step = [&](bool ok) {
    if (!ok && err == 0) err = errno ? errno : EIO;
  };
  std::byte len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<std::byte>((text.size() >> (8 * i)) & 0xff);
  step(std::fwrite(len, 1, 8, out) == 8);
  step(err == 0 && std::fwrite(text.data(), 1, text.size(), out) == text.size());
  for (std::size_t i = 0; err == 0 && i < tensors.size(); ++i) {
    step(sizes[i] == 0 || std::fwrite(tensors[i].data, 1, sizes[i], out) == sizes[i]);
  }
  // fsync before rename: otherwise a crash may leave the new name pointing at unwritten data.
  step(err == 0 && std::fflush(out) == 0);
  step(err == 0 && ::fsync(::fileno(out)) == 0);
  step(std::fclose(out) == 0);
  const bool ok = err == 0;
  std::error_code ec;
  if (!ok) {
    std::filesystem::remove(tmp, ec);
    throw std::runtime_error(where + ": write failed: " + std::strerror(err));
  }
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    std::error_code ignored;
    std::filesystem::remove(tmp, ignored);
    throw std::runtime_error(where + ": cannot rename " + path_str(tmp) + " into place: " + ec.message());
  }
}

}  // namespace loraplex::model
