#pragma once
// Argument checks shared by the ops' entry points: each failure is a std::invalid_argument naming the op and
// the offending value.

#include <stdexcept>
#include <string>

namespace loraplex::kernels::cuda::detail {

inline void require(bool ok, const char* op, const std::string& what) {
  if (!ok) throw std::invalid_argument(std::string(op) + ": " + what);
}

inline void require_ptr(const void* p, const char* op, const char* name) {
  if (p == nullptr) throw std::invalid_argument(std::string(op) + ": " + name + " is null");
}

inline void require_nonneg(long long v, const char* op, const char* name) {
  if (v < 0) throw std::invalid_argument(std::string(op) + ": " + name + " = " + std::to_string(v) + " is negative");
}

}  // namespace loraplex::kernels::cuda::detail
