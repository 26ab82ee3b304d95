#pragma once
/// Helpers shared by the model tests: a self-removing temporary directory, whole-file I/O and an error check
/// that asserts both the exception type and what its message names.

#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <iterator>
#include <random>
#include <sstream>
#include <string>

#include <unistd.h>

#include <boost/test/unit_test.hpp>

namespace loraplex::test {

/// A fresh directory under the system temp dir, removed with everything in it at scope exit.
class temp_dir {
 public:
  temp_dir() {
    std::random_device rd;
    for (int attempt = 0;; ++attempt) {
      std::ostringstream name;
      name << "loraplex-test-" << ::getpid() << "-" << std::hex << rd();
      path_ = std::filesystem::temp_directory_path() / name.str();
      if (std::filesystem::create_directory(path_)) return;
      if (attempt > 100) throw std::runtime_error("cannot create a temporary directory");
    }
  }
  temp_dir(const temp_dir&) = delete;
  temp_dir& operator=(const temp_dir&) = delete;
  ~temp_dir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  [[nodiscard]] const std::filesystem::path& path() const noexcept { return path_; }

 private:
  std::filesystem::path path_;
};

[[nodiscard]] inline std::string read_file(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  BOOST_REQUIRE_MESSAGE(in, "cannot read " << p);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

inline void write_file(const std::filesystem::path& p, const std::string& bytes) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  BOOST_REQUIRE_MESSAGE(out.good(), "cannot write " << p);
}

/// Runs f; checks it throws exactly E (not another type) and that the message holds every one of parts.
template <class E, class F>
void check_error(const std::string& label, F&& f, std::initializer_list<std::string> parts) {
  try {
    f();
    BOOST_ERROR(label << ": no exception thrown");
  } catch (const E& e) {
    const std::string msg = e.what();
    for (const auto& p : parts) {
      BOOST_CHECK_MESSAGE(msg.find(p) != std::string::npos,
                          label << ": message \"" << msg << "\" lacks \"" << p << "\"");
    }
    BOOST_TEST_MESSAGE(label << ": " << msg);
  } catch (const std::exception& e) {
    BOOST_ERROR(label << ": wrong exception type, message: " << e.what());
  }
}

}  // namespace loraplex::test
