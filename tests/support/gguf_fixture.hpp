#pragma once
// The GGUF golden-vector file of tests/data/gguf_fixtures.py (written by the `gguf` PyPI package).
// If a Python with `gguf` is available (LOWBIT_GGUF_PYTHON, else python3), the full fixture is
// generated into a temporary folder at test time (rows of 512, real llama-21M-en weights when the
// checkpoint is present); otherwise the committed small fixture tests/data/gguf_fixture_small.gguf
// (made by the same script with --small) is used.
#include "models.hpp"

#include <cstdlib>
#include <filesystem>
#include <string>
#include <unistd.h>

namespace lowbit_test {

/// The folder of this source tree's tests/data.
inline std::filesystem::path test_data_dir() { return std::filesystem::path(__FILE__).parent_path().parent_path() / "data"; }

/// A Python interpreter that imports gguf, or "" (result cached).
inline std::string gguf_python() {
    static const std::string py = [] {
        std::string cand = "python3";
        if (const char* env = std::getenv("LOWBIT_GGUF_PYTHON"); env && *env) cand = env;
        const std::string cmd = "'" + cand + "' -c 'import gguf, numpy' >/dev/null 2>&1";
        return std::system(cmd.c_str()) == 0 ? cand : std::string();
    }();
    return py;
}

/// A temporary folder removed at exit of the object.
struct temp_dir {
    std::filesystem::path path;
    temp_dir() {
        std::string t = (std::filesystem::temp_directory_path() / "lowbit-gguf-XXXXXX").string();
        if (!mkdtemp(t.data())) throw std::runtime_error("mkdtemp failed");
        path = t;
    }
    ~temp_dir() {
        std::error_code ec;
        std::filesystem::remove_all(path, ec);
    }
    temp_dir(const temp_dir&) = delete;
    temp_dir& operator=(const temp_dir&) = delete;
};

/// Path of the fixture (generated once per process, or the committed small one) and how it was made.
struct gguf_fixture {
    std::filesystem::path path;
    bool generated = false;
};

inline const gguf_fixture& fixture() {
    static temp_dir dir;
    static const gguf_fixture f = [] {
        gguf_fixture r;
        const std::string py = gguf_python();
        if (!py.empty()) {
            const auto out = dir.path / "fixture.gguf";
            std::string cmd = "'" + py + "' '" + (test_data_dir() / "gguf_fixtures.py").string() + "' '" + out.string() + "'";
            std::error_code ec;
            const auto shard = models_dir() / "llama-21M-en" / "model-00001-of-00003.safetensors";
            if (std::filesystem::exists(shard, ec)) cmd += " --real '" + shard.string() + "'";
            cmd += " 2>/dev/null";
            if (std::system(cmd.c_str()) == 0 && std::filesystem::exists(out, ec)) {
                r.path = out;
                r.generated = true;
                return r;
            }
        }
        r.path = test_data_dir() / "gguf_fixture_small.gguf";
        return r;
    }();
    return f;
}

} // namespace lowbit_test
