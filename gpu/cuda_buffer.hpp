#pragma once
/// RAII owners for CUDA device memory and streams (host code; needs the CUDA runtime headers). Non-copyable;
/// destructors never throw (a failing free is reported on stderr).

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "kernels/cuda/cuda_error.hpp"

namespace loraplex {

[[noreturn]] inline void throw_cuda_call(cudaError_t e, const char* call, const char* file, int line) {
  int dev = -1;
  cudaGetDevice(&dev);
  throw cuda_error(std::string(call) + ": " + cudaGetErrorString(e) + " (device " + std::to_string(dev) + ", " + file +
                   ":" + std::to_string(line) + ")");
}

}  // namespace loraplex

#define LORAPLEX_CUDA_CALL(expr)                                                              \
  do {                                                                                        \
    const cudaError_t loraplex_call_e_ = (expr);                                              \
    if (loraplex_call_e_ != cudaSuccess) ::loraplex::throw_cuda_call(loraplex_call_e_, #expr, __FILE__, __LINE__); \
  } while (0)

namespace loraplex {

/// Device memory of a fixed size.
class cuda_buffer {
 public:
  cuda_buffer() = default;
  explicit cuda_buffer(std::size_t bytes) : bytes_(bytes) {
    if (bytes_ > 0) LORAPLEX_CUDA_CALL(cudaMalloc(&ptr_, bytes_));
  }
  cuda_buffer(cuda_buffer&& o) noexcept : ptr_(std::exchange(o.ptr_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}
  cuda_buffer& operator=(cuda_buffer&& o) noexcept {
    if (this != &o) {
      release();
      ptr_ = std::exchange(o.ptr_, nullptr);
      bytes_ = std::exchange(o.bytes_, 0);
    }
    return *this;
  }
  cuda_buffer(const cuda_buffer&) = delete;
  cuda_buffer& operator=(const cuda_buffer&) = delete;
  ~cuda_buffer() { release(); }

  [[nodiscard]] void* get() const noexcept { return ptr_; }
  template <typename T>
  [[nodiscard]] T* as() const noexcept {
    return static_cast<T*>(ptr_);
  }
  [[nodiscard]] std::size_t bytes() const noexcept { return bytes_; }

  /// Synchronous copies (tests, one-time uploads).
  void upload(const void* src, std::size_t n) { LORAPLEX_CUDA_CALL(cudaMemcpy(ptr_, src, n, cudaMemcpyHostToDevice)); }
  void download(void* dst, std::size_t n) const { LORAPLEX_CUDA_CALL(cudaMemcpy(dst, ptr_, n, cudaMemcpyDeviceToHost)); }
  template <typename T>
  static cuda_buffer from(const std::vector<T>& v) {
    cuda_buffer b(v.size() * sizeof(T));
    b.upload(v.data(), b.bytes());
    return b;
  }
  template <typename T>
  [[nodiscard]] std::vector<T> to_vector(std::size_t n) const {
    std::vector<T> v(n);
    download(v.data(), n * sizeof(T));
    return v;
  }

 private:
  void release() noexcept {
    if (ptr_ != nullptr) {
      const cudaError_t e = cudaFree(ptr_);
      if (e != cudaSuccess) std::fprintf(stderr, "loraplex: cudaFree failed: %s\n", cudaGetErrorString(e));
      ptr_ = nullptr;
    }
  }
  void* ptr_ = nullptr;
  std::size_t bytes_ = 0;
};

/// A non-blocking stream.
class cuda_stream {
 public:
  cuda_stream() { LORAPLEX_CUDA_CALL(cudaStreamCreateWithFlags(&s_, cudaStreamNonBlocking)); }
  cuda_stream(const cuda_stream&) = delete;
  cuda_stream& operator=(const cuda_stream&) = delete;
  ~cuda_stream() {
    if (s_ != nullptr) {
      const cudaError_t e = cudaStreamDestroy(s_);
      if (e != cudaSuccess) std::fprintf(stderr, "loraplex: cudaStreamDestroy failed: %s\n", cudaGetErrorString(e));
    }
  }
  [[nodiscard]] cudaStream_t get() const noexcept { return s_; }
  void synchronize() const { LORAPLEX_CUDA_CALL(cudaStreamSynchronize(s_)); }

 private:
  cudaStream_t s_ = nullptr;
};

/// An event (timing, or ordering between streams).
class cuda_event {
 public:
  explicit cuda_event(unsigned flags = cudaEventDefault) { LORAPLEX_CUDA_CALL(cudaEventCreateWithFlags(&e_, flags)); }
  cuda_event(const cuda_event&) = delete;
  cuda_event& operator=(const cuda_event&) = delete;
  ~cuda_event() {
    if (e_ != nullptr) {
      const cudaError_t e = cudaEventDestroy(e_);
      if (e != cudaSuccess) std::fprintf(stderr, "loraplex: cudaEventDestroy failed: %s\n", cudaGetErrorString(e));
    }
  }
  [[nodiscard]] cudaEvent_t get() const noexcept { return e_; }
  void record(cudaStream_t s) { LORAPLEX_CUDA_CALL(cudaEventRecord(e_, s)); }
  void synchronize() const { LORAPLEX_CUDA_CALL(cudaEventSynchronize(e_)); }
  /// Milliseconds from `start` to this event.
  [[nodiscard]] float elapsed_ms_since(const cuda_event& start) const {
    float ms = 0.0f;
    LORAPLEX_CUDA_CALL(cudaEventElapsedTime(&ms, start.e_, e_));
    return ms;
  }

 private:
  cudaEvent_t e_ = nullptr;
};

}  // namespace loraplex
