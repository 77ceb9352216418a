#pragma once
/// \file model/checkpoint.hpp
/// One entry point for every model a user has: `open_model(path)` recognises
/// - a Hugging Face checkpoint folder (config.json + model.safetensors[.index.json] + tokenizer.json),
/// - a llama2.c checkpoint file (`.bin`; its tokenizer is `--tokenizer`, or `tokenizer.bin` /
///   `tok<N>.bin` beside it),
/// - a lowbit quantized model (`.safetensors` written by `save_quantized_model`, which carries its
///   tokenizer),
/// - a GGUF file (`.gguf`; architectures `llama`, `qwen3`, `qwen3moe`, every tensor dequantized to
///   FP32 by `import_gguf`, tokenizer rebuilt from the metadata),
/// and returns the runnable model with its tokenizer (`text_tokenizer`, either kind behind one
/// interface) and, for a lowbit quantized model, its recipe and records. The text protocol of each
/// tokenizer kind is described in model/text_tokenizer.hpp.
///
/// Compile time: `open_model` is a function template with one defaulted, unused parameter
/// (`template <class = void>`; call it as an ordinary function), so what loading needs (every
/// packed-kernel combination of `build_linear`) is compiled only in a translation unit that calls it
/// (docs/compile_time.md).

#include <lowbit/config.hpp>
#include <lowbit/error.hpp>
#include <lowbit/io/bpe_tokenizer.hpp>
#include <lowbit/io/llama2c.hpp>
#include <lowbit/io/mapped_file.hpp>
#include <lowbit/io/text_corpus.hpp>
#include <lowbit/io/tokenizer.hpp>
#include <lowbit/model/gguf_model.hpp>
#include <lowbit/model/hf_model.hpp>
#include <lowbit/model/llama.hpp>
#include <lowbit/model/recipes.hpp>
#include <lowbit/model/text_tokenizer.hpp>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

LOWBIT_BEGIN_NAMESPACE

/// What `open_model` found.
struct opened_model {
    std::string kind;                  ///< "hf", "llama2c", "lowbit" or "gguf"
    llama_model model;                 ///< runnable (FP32 for hf/llama2c/gguf; packed kernels for lowbit)
    text_tokenizer tokenizer;          ///< may be empty (llama2.c file without a tokenizer beside it)
    std::optional<quantized_model> quantized; ///< recipe and records of a lowbit model (its `model` is moved into `model`)
};

namespace detail {
inline std::filesystem::path llama2c_tokenizer_beside(const std::filesystem::path& model) {
    namespace fs = std::filesystem;
    std::error_code ec;
    const fs::path dir = model.parent_path().empty() ? fs::path(".") : model.parent_path();
    if (fs::exists(dir / "tokenizer.bin", ec)) return dir / "tokenizer.bin";
    for (const auto& e : fs::directory_iterator(dir, ec)) {
        const std::string n = e.path().filename().string();
        if (n.size() > 7 && n.rfind("tok", 0) == 0 && e.path().extension() == ".bin" && e.path() != model) return e.path();
    }
    return {};
}
} // namespace detail

/// Opens the model at `path` (see the file comment). `tokenizer` overrides the tokenizer file.
/// \throws format_error (not a recognised model, or as the readers), numeric_error (NaN/Inf weights).
template <class = void>
[[nodiscard]] opened_model open_model(const std::filesystem::path& path, const std::filesystem::path& tokenizer = {}) {
    namespace fs = std::filesystem;
    std::error_code ec;
    opened_model o;
    if (fs::is_directory(path, ec)) {
        if (!is_hf_checkpoint(path))
            throw format_error("lowbit: open_model: folder '" + path.string() +
                               "' is not a Hugging Face checkpoint (needs config.json and model.safetensors[.index.json])");
        o.kind = "hf";
        o.model = load_hf_model(path);
        const fs::path tok = tokenizer.empty() ? path / "tokenizer.json" : tokenizer;
        if (fs::exists(tok, ec)) o.tokenizer = text_tokenizer::read(tok, o.model.config.vocab_size);
    } else if (path.extension() == ".safetensors") {
        o.kind = "lowbit";
        quantized_model q = load_quantized_model(path);
        o.model = std::move(q.model);
        if (!tokenizer.empty()) o.tokenizer = text_tokenizer::read(tokenizer, o.model.config.vocab_size);
        else if (!q.tokenizer_format.empty())
            o.tokenizer = text_tokenizer(q.tokenizer_format, q.tokenizer_bytes, o.model.config.vocab_size);
        o.quantized = std::move(q);
    } else if (path.extension() == ".gguf") {
        o.kind = "gguf";
        gguf_model g = import_gguf(path);
        o.model = std::move(g.model);
        if (!tokenizer.empty()) o.tokenizer = text_tokenizer::read(tokenizer, o.model.config.vocab_size);
        else o.tokenizer = std::move(g.tokenizer);
    } else {
        if (!fs::exists(path, ec)) throw format_error("lowbit: open_model: '" + path.string() + "' does not exist");
        o.kind = "llama2c";
        const auto ck = io::read_llama2c(path);
        o.model = model_from_llama2c(ck);
        o.model.architecture = "llama2c";
        const fs::path tok = tokenizer.empty() ? detail::llama2c_tokenizer_beside(path) : tokenizer;
        if (!tok.empty()) o.tokenizer = text_tokenizer::read(tok, o.model.config.vocab_size);
    }
    if (!o.tokenizer.empty() && o.tokenizer.vocab_size() > o.model.config.vocab_size)
        throw format_error("lowbit: open_model: the tokenizer has " + std::to_string(o.tokenizer.vocab_size()) +
                           " tokens, the model's vocabulary " + std::to_string(o.model.config.vocab_size));
    return o;
}

// Separate instantiation (docs/compile_time.md): defined as `extern`, LOWBIT_MODEL_INSTANTIATION turns these
// into declarations; one translation unit of the program defines it empty after including this header's
// dependencies, and compiles them.
#ifdef LOWBIT_MODEL_INSTANTIATION
LOWBIT_MODEL_INSTANTIATION template opened_model open_model<>(const std::filesystem::path&, const std::filesystem::path&);
#endif

LOWBIT_END_NAMESPACE
