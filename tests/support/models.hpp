#pragma once
// Locates the real checkpoint folder (../shared/models) for tests and examples.
// Order: the LOWBIT_MODELS_DIR environment variable, then the folder CMake was configured with.
#include <cstdlib>
#include <filesystem>
#include <stdexcept>
#include <string>

namespace lowbit_test {

inline std::filesystem::path models_dir() {
    if (const char* env = std::getenv("LOWBIT_MODELS_DIR"); env && *env) return env;
#ifdef LOWBIT_MODELS_DIR
    return LOWBIT_MODELS_DIR;
#else
    return "../shared/models";
#endif
}

/// Path of a file under stories260K/; throws with a clear message if it is missing.
inline std::filesystem::path stories260k(const std::string& file) {
    auto p = models_dir() / "stories260K" / file;
    if (!std::filesystem::exists(p))
        throw std::runtime_error("real checkpoint file not found: " + p.string() +
                                 " (set LOWBIT_MODELS_DIR to the folder holding stories260K/)");
    return p;
}

} // namespace lowbit_test
