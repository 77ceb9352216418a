#pragma once
// Failure injection for the tests of lowbit's atomic writers (io/detail/atomic_file.hpp): a file-size
// limit that makes a write fail midway with a real I/O error (works as root, unlike permissions),
// and helpers that compare a file byte for byte and list leftover temporary files.
#include <algorithm>
#include <csignal>
#include <cstddef>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include <sys/resource.h>

namespace lowbit_test {

/// While alive, no file of this process can grow beyond `bytes` (RLIMIT_FSIZE): a write past it
/// fails with EFBIG (SIGXFSZ is ignored meanwhile). Restores the previous limit and handler.
class file_size_limit {
public:
    explicit file_size_limit(rlim_t bytes) {
        ::getrlimit(RLIMIT_FSIZE, &old_);
        old_handler_ = std::signal(SIGXFSZ, SIG_IGN);
        rlimit r = old_;
        r.rlim_cur = bytes;
        ::setrlimit(RLIMIT_FSIZE, &r);
    }
    file_size_limit(const file_size_limit&) = delete;
    file_size_limit& operator=(const file_size_limit&) = delete;
    ~file_size_limit() {
        ::setrlimit(RLIMIT_FSIZE, &old_);
        std::signal(SIGXFSZ, old_handler_);
    }

private:
    rlimit old_{};
    void (*old_handler_)(int) = SIG_DFL;
};

/// The bytes of a file (empty if it cannot be read).
inline std::vector<char> file_bytes(const std::filesystem::path& p) {
    std::ifstream f(p, std::ios::binary);
    return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

/// Writes `text` as the file `p` (plain, not atomic: a test's "previous output").
inline void put_file(const std::filesystem::path& p, const std::string& text) {
    std::ofstream(p, std::ios::binary | std::ios::trunc) << text;
}

/// Names of the files in `folder` that are temporaries of the atomic writer (".lowbit-tmp").
inline std::vector<std::string> leftover_temporaries(const std::filesystem::path& folder) {
    std::vector<std::string> out;
    for (const auto& e : std::filesystem::directory_iterator(folder))
        if (e.path().filename().string().find(".lowbit-tmp") != std::string::npos) out.push_back(e.path().filename().string());
    std::sort(out.begin(), out.end());
    return out;
}

} // namespace lowbit_test
