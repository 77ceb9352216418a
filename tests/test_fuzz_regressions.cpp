// Replays the fuzz regression inputs (tests/fuzz/regressions/<target>/, see the README there) and the
// small seed inputs through the libFuzzer harnesses of tests/fuzz/, compiled into this normal test
// program: each harness's contract (it aborts on a violation) is checked on every input that once
// broke it, without clang or sanitizers.
#include <lowbit/gemm.hpp>
#include <lowbit/io/bpe_tokenizer.hpp>
#include <lowbit/io/gguf.hpp>
#include <lowbit/io/llama2c.hpp>
#include <lowbit/io/safetensors.hpp>
#include <lowbit/io/sharded_safetensors.hpp>
#include <lowbit/io/tokenizer.hpp>
#include <lowbit/model/hf_model.hpp>
#include <lowbit/model/recipes.hpp>
#include <lowbit/pack.hpp>
#include <lowbit/salient_binary.hpp>
#include <lowbit/salient_ternary.hpp>

// Each harness defines LLVMFuzzerTestOneInput: renamed per target so that all fit in one program.
#define LLVMFuzzerTestOneInput replay_fuzz_bpe_tokenizer
#include "fuzz/fuzz_bpe_tokenizer.cpp"
#undef LLVMFuzzerTestOneInput
#define LLVMFuzzerTestOneInput replay_fuzz_gguf
#include "fuzz/fuzz_gguf.cpp"
#undef LLVMFuzzerTestOneInput
#define LLVMFuzzerTestOneInput replay_fuzz_llama2c
#include "fuzz/fuzz_llama2c.cpp"
#undef LLVMFuzzerTestOneInput
#define LLVMFuzzerTestOneInput replay_fuzz_model_metadata
#include "fuzz/fuzz_model_metadata.cpp"
#undef LLVMFuzzerTestOneInput
#define LLVMFuzzerTestOneInput replay_fuzz_packed
#include "fuzz/fuzz_packed.cpp"
#undef LLVMFuzzerTestOneInput
#define LLVMFuzzerTestOneInput replay_fuzz_salient_binary
#include "fuzz/fuzz_salient_binary.cpp"
#undef LLVMFuzzerTestOneInput
#define LLVMFuzzerTestOneInput replay_fuzz_salient_ternary
#include "fuzz/fuzz_salient_ternary.cpp"
#undef LLVMFuzzerTestOneInput
#define LLVMFuzzerTestOneInput replay_fuzz_safetensors
#include "fuzz/fuzz_safetensors.cpp"
#undef LLVMFuzzerTestOneInput
#define LLVMFuzzerTestOneInput replay_fuzz_safetensors_index
#include "fuzz/fuzz_safetensors_index.cpp"
#undef LLVMFuzzerTestOneInput

#include <doctest/doctest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <string>
#include <vector>

namespace {

using harness = int (*)(const std::uint8_t*, std::size_t);

const std::map<std::string, harness>& harnesses() {
    static const std::map<std::string, harness> m{
        {"fuzz_bpe_tokenizer", replay_fuzz_bpe_tokenizer}, {"fuzz_gguf", replay_fuzz_gguf},
        {"fuzz_llama2c", replay_fuzz_llama2c},             {"fuzz_model_metadata", replay_fuzz_model_metadata},
        {"fuzz_packed", replay_fuzz_packed},               {"fuzz_safetensors", replay_fuzz_safetensors},
        {"fuzz_salient_binary", replay_fuzz_salient_binary}, {"fuzz_salient_ternary", replay_fuzz_salient_ternary},
        {"fuzz_safetensors_index", replay_fuzz_safetensors_index}};
    return m;
}

int replay(harness h, const std::string& bytes) {
    // a copy in its own allocation, as libFuzzer passes it (reads past the end stay detectable)
    const std::vector<std::uint8_t> data(bytes.begin(), bytes.end());
    return h(data.data(), data.size());
}

} // namespace

TEST_CASE("every fuzz regression input passes its harness") {
    const std::filesystem::path dir = std::filesystem::path(__FILE__).parent_path() / "fuzz" / "regressions";
    int replayed = 0;
    for (const auto& folder : std::filesystem::directory_iterator(dir)) {
        if (!folder.is_directory()) continue;
        const std::string target = folder.path().filename().string();
        INFO("target " << target);
        const auto it = harnesses().find(target);
        REQUIRE_MESSAGE(it != harnesses().end(), "no harness of that name in tests/fuzz");
        for (const auto& f : std::filesystem::directory_iterator(folder.path())) {
            INFO("input " << f.path().filename().string());
            std::ifstream in(f.path(), std::ios::binary);
            const std::string bytes{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
            CHECK(replay(it->second, bytes) == 0); // a contract violation aborts the program
            ++replayed;
        }
    }
    CHECK(replayed >= 1);
}

TEST_CASE("the harnesses run on small hand-made inputs (empty, valid, truncated)") {
    const std::string tiny_index = R"({"metadata":{"total_size":8},"weight_map":{"a":"model-00001-of-00001.safetensors"}})";
    const std::string tiny_tokenizer =
        R"({"version":"1.0","added_tokens":[],"normalizer":null,"pre_tokenizer":{"type":"ByteLevel","add_prefix_space":false,)"
        R"("use_regex":true},"decoder":{"type":"ByteLevel"},"model":{"type":"BPE","vocab":{"a":0,"b":1,"ab":2},"merges":["a b"]}})";
    for (const auto& [target, h] : harnesses())
        for (const std::string& s : {std::string(), std::string("\0\1\2\3\4\5\6\7", 8), tiny_index, tiny_tokenizer,
                                     tiny_index.substr(0, 20), std::string(300, '\x7f')}) {
            INFO("target " << target << ", input of " << s.size() << " bytes");
            CHECK(replay(h, s) == 0);
        }
}

TEST_CASE("the salient-binary harness accepts a valid matrix and checks its products") {
    // 3 x 70: blocks of 40 (7 salient) and 30 (none), the column map reversed, with and without the split
    for (const bool split : {false, true}) {
        std::vector<std::int32_t> source;
        for (int c = 0; c < 48; ++c) source.push_back(c < 40 ? 69 - c : -1);
        for (int c = 0; c < 32; ++c) source.push_back(c < 30 ? c : -1);
        const Eigen::Index words = 5 + (split ? 5 : 1);
        std::vector<std::uint16_t> codes(static_cast<std::size_t>(3 * words));
        for (std::size_t k = 0; k < codes.size(); ++k) codes[k] = static_cast<std::uint16_t>(0x9E37u * (k + 1));
        lowbit::vector_f table(3 * 2 * 8);
        for (Eigen::Index e = 0; e < table.size(); ++e) table(e) = static_cast<float>(e % 7 - 3) / 4.0f;
        const lowbit::salient_binary_matrix m(3, 70, {{40, 7}, {30, 0}}, source, split, codes, table);
        std::string input{'\0', '\2', '\x45', '\0'}; // rows 1 + 2 % 4 = 3, cols 1 + 69 = 70
        for (const std::uint8_t b : m.bytes()) input.push_back(static_cast<char>(b));
        CHECK(replay(replay_fuzz_salient_binary, input) == 0);
        CHECK(replay(replay_fuzz_salient_binary, input.substr(0, input.size() - 1)) == 0); // truncated: refused
    }
}

TEST_CASE("the salient-ternary harness accepts a valid matrix and checks its products") {
    // 3 x 70: blocks of 40 (7 or 20 salient) and 30 (none), the column map reversed
    for (const int salient : {7, 20}) {
        std::vector<std::int32_t> source;
        for (int c = 0; c < 48; ++c) source.push_back(c < 40 ? 69 - c : -1);
        for (int c = 0; c < 32; ++c) source.push_back(c < 30 ? c : -1);
        // per row, chunk by chunk: P, N, G (+ P1, N1 on chunks holding salient columns); padding lanes empty
        std::vector<std::uint16_t> codes;
        const int sal_lanes[5] = {std::min(salient, 16), std::max(0, salient - 16), 0, 0, 0};
        const std::uint16_t real[5] = {0xFFFF, 0xFFFF, 0x00FF, 0xFFFF, 0x3FFF};
        for (int i = 0; i < 3; ++i)
            for (int c = 0; c < 5; ++c) {
                const auto mix = static_cast<std::uint16_t>(0x9E37u * static_cast<unsigned>(i * 5 + c + 1));
                const auto p = static_cast<std::uint16_t>(mix & real[c]);
                codes.push_back(p);
                codes.push_back(static_cast<std::uint16_t>(~mix & 0x5555u & real[c]));
                codes.push_back(static_cast<std::uint16_t>((mix >> 3) & real[c]));
                if (sal_lanes[c] > 0) {
                    const auto sal = static_cast<std::uint16_t>((1u << sal_lanes[c]) - 1u);
                    codes.push_back(static_cast<std::uint16_t>(0x0F0Fu & sal));
                    codes.push_back(static_cast<std::uint16_t>(0x3030u & sal));
                }
            }
        lowbit::vector_f params(3 * 2 * 10);
        for (Eigen::Index e = 0; e < params.size(); ++e) params(e) = static_cast<float>(e % 7 - 3) / 4.0f;
        const lowbit::salient_ternary_matrix m(3, 70, {{40, salient}, {30, 0}}, source, codes, params);
        std::string input{'\0', '\2', '\x45', '\0'}; // rows 1 + 2 % 4 = 3, cols 1 + 69 = 70
        for (const std::uint8_t b : m.bytes()) input.push_back(static_cast<char>(b));
        CHECK(replay(replay_fuzz_salient_ternary, input) == 0);
        CHECK(replay(replay_fuzz_salient_ternary, input.substr(0, input.size() - 1)) == 0); // truncated: refused
    }
}
