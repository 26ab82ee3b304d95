#pragma once
/// Fixed-size pages of the KV cache: a free list of page indices. The same abstraction serves the CPU and
/// CUDA backends (and, later, the unified pool shared with adapter weights).

#include <cstdint>
#include <span>
#include <vector>

namespace loraplex::engine {

class block_allocator {
 public:
  block_allocator(int num_pages, int page_size);

  [[nodiscard]] int page_size() const noexcept { return page_size_; }
  [[nodiscard]] int num_pages() const noexcept { return num_pages_; }
  [[nodiscard]] int num_free() const noexcept { return static_cast<int>(free_.size()); }
  /// Pages needed to hold `tokens` tokens.
  [[nodiscard]] int pages_for(int tokens) const noexcept { return (tokens + page_size_ - 1) / page_size_; }

  /// Appends pages to `table` until it holds `tokens` tokens. All or nothing: false (table unchanged) when
  /// too few pages are free.
  [[nodiscard]] bool grow(std::vector<std::int32_t>& table, int tokens);
  /// Returns every page of `table` to the free list and clears it.
  void release(std::vector<std::int32_t>& table);

 private:
  int num_pages_;
  int page_size_;
  std::vector<std::int32_t> free_;  // a stack: the most recently freed page is reused first
  std::vector<bool> in_use_;        // catches double frees
};

}  // namespace loraplex::engine
