#pragma once
// Locates the real checkpoint folder (../shared/models) for tests and examples.
// Order: the LOWBIT_MODELS_DIR environment variable, then the folder CMake was configured with.
#include "../../examples/shared_models.hpp" // the one models_dir() of examples and tests

#include <filesystem>
#include <stdexcept>
#include <string>

namespace lowbit_test {

using lowbit_examples::models_dir;

/// Path of a file under stories260K/; throws with a clear message if it is missing.
inline std::filesystem::path stories260k(const std::string& file) {
    auto p = models_dir() / "stories260K" / file;
    if (!std::filesystem::exists(p))
        throw std::runtime_error("real checkpoint file not found: " + p.string() +
                                 " (set LOWBIT_MODELS_DIR to the folder holding stories260K/)");
    return p;
}

/// Folder of a Hugging Face checkpoint under the models folder ("llama-21M-en", "qwen3moe-18M-en",
/// "rwkv4-25M-en"), or a file in it when `file` is not empty; throws with a clear message if missing.
inline std::filesystem::path hf_model(const std::string& model, const std::string& file = "") {
    auto p = models_dir() / model;
    if (!file.empty()) p /= file;
    if (!std::filesystem::exists(p))
        throw std::runtime_error("Hugging Face checkpoint file not found: " + p.string() +
                                 " (set LOWBIT_MODELS_DIR to the folder holding " + model + "/)");
    return p;
}
/// `llama-21M-en/` or a file in it (see hf_model).
inline std::filesystem::path llama21m(const std::string& file = "") { return hf_model("llama-21M-en", file); }
/// `qwen3moe-18M-en/` or a file in it (see hf_model).
inline std::filesystem::path qwen3moe18m(const std::string& file = "") { return hf_model("qwen3moe-18M-en", file); }
/// `rwkv4-25M-en/` or a file in it (see hf_model).
inline std::filesystem::path rwkv4_25m(const std::string& file = "") { return hf_model("rwkv4-25M-en", file); }

} // namespace lowbit_test
