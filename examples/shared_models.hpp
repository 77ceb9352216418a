#pragma once
// Where the examples find the real checkpoints: the folder given by the LOWBIT_MODELS_DIR
// environment variable, else the one CMake was configured with (../shared/models beside the
// checkout). Example code only: the library itself never looks for files on its own.
#include <cstdlib>
#include <filesystem>
#include <stdexcept>
#include <string>

namespace lowbit_examples {

/// The models folder (environment first, then the configured default).
inline std::filesystem::path models_dir() {
    if (const char* env = std::getenv("LOWBIT_MODELS_DIR"); env && *env) return env;
#ifdef LOWBIT_MODELS_DIR
    return LOWBIT_MODELS_DIR;
#else
    return "../shared/models";
#endif
}

/// `models_dir()/sub/file`; throws std::runtime_error naming the path if it does not exist.
inline std::filesystem::path model_file(const std::string& sub, const std::string& file = "") {
    auto p = models_dir() / sub;
    if (!file.empty()) p /= file;
    if (!std::filesystem::exists(p))
        throw std::runtime_error("model file not found: " + p.string() +
                                 " (set LOWBIT_MODELS_DIR to the folder holding " + sub + "/)");
    return p;
}

} // namespace lowbit_examples
