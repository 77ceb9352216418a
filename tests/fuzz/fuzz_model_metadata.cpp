// libFuzzer target: the model layer's text parsers on arbitrary bytes — Hugging Face config.json
// (`parse_hf_config`, and the RWKV one `parse_rwkv_config`), a saved model's metadata
// (`set_recipe_fields`, the `lowbit.model` fields) and JSON Lines text corpora
// (`io::parse_jsonl_documents`, the calibration/evaluation reader). Contract: malformed input throws lowbit::format_error or lowbit::invalid_argument and
// nothing else (no crash, leak or UB under ASan/UBSan); an accepted recipe re-serialises to a
// string that parses back to the same fields.
// Build and run: scripts/fuzz.
#include <lowbit/io/text_corpus.hpp>
#include <lowbit/model/hf_model.hpp>
#include <lowbit/model/recipes.hpp>
#include <lowbit/model/rwkv.hpp>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string_view text(reinterpret_cast<const char*>(data), size);
    try {
        const auto h = lowbit::parse_hf_config(text, "fuzz/config.json");
        if (h.config.dim <= 0 || h.config.n_layers <= 0 || h.config.n_heads <= 0) std::abort();
        if (h.moe_layer.size() != static_cast<std::size_t>(h.config.n_layers)) std::abort();
    } catch (const lowbit::format_error&) {
    }
    try {
        const auto rc = lowbit::parse_rwkv_config(text, "fuzz/config.json");
        if (rc.dim <= 0 || rc.n_layers <= 0 || rc.attention_dim <= 0 || rc.ffn_dim <= 0) std::abort();
    } catch (const lowbit::format_error&) {
    }
    try {
        std::size_t total = 0;
        for (const auto& d : lowbit::io::parse_jsonl_documents(text, "fuzz.jsonl")) total += d.size();
        if (total > text.size()) std::abort(); // JSON escapes only shrink: the texts fit in the input
    } catch (const lowbit::format_error&) {
    }
    lowbit::recipe r;
    try {
        lowbit::set_recipe_fields(r, text);
        const std::string s = lowbit::recipe_fields(r);
        lowbit::recipe back;
        lowbit::set_recipe_fields(back, s);
        if (lowbit::recipe_fields(back) != s) std::abort();
    } catch (const lowbit::invalid_argument&) {
    }
    try {
        lowbit::llama_model m;
        lowbit::detail::parse_model_fields(text, m);
        if (m.config.dim <= 0 || m.config.n_heads % m.config.n_kv_heads != 0) std::abort();
    } catch (const lowbit::format_error&) {
    }
    return 0;
}
