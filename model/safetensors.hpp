#pragma once
/// safetensors: memory-mapped, zero-copy tensor views; single files and sharded checkpoints
/// (model.safetensors.index.json). Supported element types: F32, F16, BF16.
///
/// Validation on open (each failure is a format_error naming the file and, where known, the tensor): file at
/// least 8 bytes; header length <= 100 MiB and inside the file; header is a JSON object; every tensor has
/// dtype, shape, data_offsets; offsets ordered, inside the data section, not overlapping another tensor;
/// element count × element size == byte length. An unsupported dtype (I8, F64, …) is an unsupported_error.

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "kernels/dtype.hpp"
#include "model/errors.hpp"

namespace loraplex::model {

/// A view of one tensor inside a mapped file. Valid while the file (or checkpoint) that made it lives.
struct tensor_view {
  std::string name;
  dtype type = dtype::f32;
  std::vector<std::int64_t> shape;
  const std::byte* data = nullptr;
  std::size_t bytes = 0;

  [[nodiscard]] std::int64_t numel() const noexcept;
  /// "[4, 128]"
  [[nodiscard]] std::string shape_string() const;
};

/// One memory-mapped safetensors file. Move-only; unmaps on destruction.
class safetensors_file {
 public:
  /// Opens, maps and validates the file; throws format_error / unsupported_error.
  [[nodiscard]] static safetensors_file open(const std::filesystem::path& path);

  safetensors_file(safetensors_file&&) noexcept;
  safetensors_file& operator=(safetensors_file&&) noexcept;
  safetensors_file(const safetensors_file&) = delete;
  safetensors_file& operator=(const safetensors_file&) = delete;
  ~safetensors_file();

  /// nullptr when absent.
  [[nodiscard]] const tensor_view* find(std::string_view name) const noexcept;
  [[nodiscard]] const std::vector<tensor_view>& tensors() const noexcept { return tensors_; }
  [[nodiscard]] const std::map<std::string, std::string>& metadata() const noexcept { return metadata_; }
  [[nodiscard]] const std::filesystem::path& path() const noexcept { return path_; }

 private:
  safetensors_file() = default;
  std::filesystem::path path_;
  void* map_ = nullptr;
  std::size_t map_bytes_ = 0;
  std::vector<tensor_view> tensors_;
  std::map<std::string, std::string> metadata_;
};

/// A model's weights: `model.safetensors`, or the shards listed by `model.safetensors.index.json`.
class safetensors_checkpoint {
 public:
  /// dir holds model.safetensors or model.safetensors.index.json (the index wins when both exist). A shard the
  /// index names that is missing, or a tensor the index maps to a shard that does not hold it, is a
  /// format_error naming both.
  [[nodiscard]] static safetensors_checkpoint open_dir(const std::filesystem::path& dir);
  /// A single file.
  [[nodiscard]] static safetensors_checkpoint open_file(const std::filesystem::path& file);

  [[nodiscard]] const tensor_view* find(std::string_view name) const noexcept;
  /// Throws format_error "tensor 'X' not found in <dir>".
  [[nodiscard]] const tensor_view& get(std::string_view name) const;
  [[nodiscard]] std::vector<std::string> names() const;
  [[nodiscard]] const std::filesystem::path& source() const noexcept { return source_; }

 private:
  std::filesystem::path source_;
  std::vector<std::unique_ptr<safetensors_file>> files_;
  std::map<std::string, const tensor_view*, std::less<>> index_;
};

/// A tensor to write (F32, F16 or BF16; data holds numel × size bytes, row-major).
struct tensor_to_write {
  std::string name;
  dtype type = dtype::f32;
  std::vector<std::int64_t> shape;
  const void* data = nullptr;
};

/// Writes a safetensors file. Atomic: writes `<path>.tmp` then renames, so a failure leaves nothing
/// half-written. Tensors are laid out in the given order, 8-byte aligned header. Throws std::runtime_error
/// naming the path on I/O failure.
void write_safetensors(const std::filesystem::path& path, const std::vector<tensor_to_write>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace loraplex::model
