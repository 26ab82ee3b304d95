#pragma once
/// Errors raised while reading model files. Messages name the file and, where there is one, the tensor or
/// the config field, so a person can act on them.

#include <stdexcept>

namespace loraplex::model {

/// A file is malformed or inconsistent (safetensors header, JSON, shapes).
class format_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// A file is well formed but asks for something loraplex does not serve (an architecture, a PEFT feature).
class unsupported_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace loraplex::model
