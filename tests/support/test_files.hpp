#pragma once
// File helpers shared by the tests: little-endian value files of the models folder's reference
// data (ref_ids.u32, ref_logits.f32, dev_ids.u32) and temporary folders removed at scope exit.
#include <cstddef>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace lowbit_test {

/// The whole file as values of T (native = little-endian on every supported machine).
/// Throws std::runtime_error naming the file if it cannot be read.
template <class T>
std::vector<T> read_values(const std::filesystem::path& p) {
    std::ifstream f(p, std::ios::binary | std::ios::ate);
    if (!f) throw std::runtime_error("cannot read " + p.string());
    const auto n = static_cast<std::size_t>(f.tellg());
    f.seekg(0);
    std::vector<T> v(n / sizeof(T));
    f.read(reinterpret_cast<char*>(v.data()), static_cast<std::streamsize>(v.size() * sizeof(T)));
    return v;
}

/// A folder under the system's temporary directory, emptied on creation and removed at scope exit.
struct temp_dir {
    std::filesystem::path path;
    explicit temp_dir(const std::string& name) : path(std::filesystem::temp_directory_path() / name) {
        std::filesystem::remove_all(path);
        std::filesystem::create_directories(path);
    }
    temp_dir(const temp_dir&) = delete;
    temp_dir& operator=(const temp_dir&) = delete;
    ~temp_dir() {
        std::error_code ec;
        std::filesystem::remove_all(path, ec);
    }
};

} // namespace lowbit_test
