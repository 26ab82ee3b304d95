#include "tools/bench/report.hpp"

#include <cstdarg>
#include <fstream>

namespace loraplex::bench {

std::string table::markdown() const {
  std::string s = "|";
  for (const auto& h : header) s += " " + h + " |";
  s += "\n|";
  for (std::size_t i = 0; i < header.size(); ++i) s += " --- |";
  s += "\n";
  for (const auto& r : rows) {
    s += "|";
    for (const auto& c : r) s += " " + c + " |";
    s += "\n";
  }
  return s;
}

void report::emit(const std::string& block) {
  text_ += block;
  std::fputs(block.c_str(), stdout);
  std::fflush(stdout);
}

void report::heading(const std::string& text) { emit("\n## " + text + "\n\n"); }
void report::paragraph(const std::string& text) { emit(text + "\n\n"); }
void report::add(const table& t) { emit(t.markdown() + "\n"); }

bool report::write(const std::string& path) const {
  std::ofstream f(path);
  if (!f) return false;
  f << text_;
  return static_cast<bool>(f);
}

std::string fmt(const char* format, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, format);
  std::vsnprintf(buf, sizeof buf, format, ap);
  va_end(ap);
  return buf;
}

}  // namespace loraplex::bench
