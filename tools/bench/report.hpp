#pragma once
/// Markdown report of a benchmark run: sections of text and tables, printed to stdout as they are added and
/// written to a file at the end.

#include <cstdio>
#include <string>
#include <vector>

namespace loraplex::bench {

struct table {
  std::vector<std::string> header;
  std::vector<std::vector<std::string>> rows;
  void add(std::vector<std::string> row) { rows.push_back(std::move(row)); }
  [[nodiscard]] std::string markdown() const;
};

class report {
 public:
  void heading(const std::string& text);       // "## text"
  void paragraph(const std::string& text);
  void add(const table& t);
  /// Writes everything added so far to path; false if the file cannot be written.
  [[nodiscard]] bool write(const std::string& path) const;

 private:
  void emit(const std::string& block);
  std::string text_;
};

/// printf into a std::string.
[[nodiscard]] std::string fmt(const char* format, ...) __attribute__((format(printf, 1, 2)));

}  // namespace loraplex::bench
