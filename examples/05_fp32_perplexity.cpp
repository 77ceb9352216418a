// Example 05: the FP32 Llama-2 forward pass on the real checkpoint: perplexity on the first 60,000
// characters of the dev text (models README protocol), greedy text from BOS, decode tokens/s.
//
// Usage: example_05_fp32_perplexity [models_dir] [--large]
//   models_dir  folder holding stories260K/ (default $LOWBIT_MODELS_DIR or ../shared/models)
//   --large     also time decoding of a random-weight model of the same architecture (dim 2048,
//               hidden 5632, 8 layers, 32 heads / 8 KV heads, vocab 512; speed only)
#include <lowbit/io/llama2c.hpp>
#include <lowbit/io/tokenizer.hpp>
#include <lowbit/model/llama.hpp>

#include "shared_models.hpp"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <fstream>
#include <sstream>

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Decode tokens/s: median of 5 runs of 256 single-token steps after a BOS prompt.
double decode_tokens_per_second(const lowbit::llama_model& m, int steps) {
    std::vector<double> rates;
    for (int rep = 0; rep < 5; ++rep) {
        lowbit::kv_cache cache(m.config);
        std::vector<int> tok{1};
        const auto t0 = std::chrono::steady_clock::now();
        for (int s = 0; s < steps; ++s) {
            const auto logits = lowbit::forward(m, cache, std::span<const int>(&tok.back(), 1), lowbit::logits_rows::last);
            tok.push_back(lowbit::argmax_row(logits, 0));
            if (tok.back() == 1) tok.back() = 3; // keep decoding past a sequence delimiter
        }
        rates.push_back(steps / seconds_since(t0));
    }
    std::sort(rates.begin(), rates.end());
    return rates[2];
}

} // namespace

int main(int argc, char** argv) try {
    bool large = false;
    for (int i = 1; i < argc; ++i)
        if (std::strcmp(argv[i], "--large") == 0) large = true;
        else setenv("LOWBIT_MODELS_DIR", argv[i], 1);
    const auto ck = lowbit::io::read_llama2c(lowbit_examples::model_file("stories260K", "stories260K.bin"));
    const auto tok = lowbit::io::read_tokenizer(lowbit_examples::model_file("stories260K", "tok512.bin"), ck.config.vocab_size);
    std::ifstream f(lowbit_examples::model_file("stories260K", "tinystories_dev.txt"), std::ios::binary);
    std::stringstream ss;
    ss << f.rdbuf();
    const auto model = lowbit::model_from_llama2c(ck);

    const auto ids = tok.encode(ss.str().substr(0, 60000), false, false, lowbit::io::dummy_prefix::separate);
    auto t0 = std::chrono::steady_clock::now();
    const auto ppl = lowbit::perplexity(model, ids);
    const double t_ppl = seconds_since(t0);
    std::printf("stories260K FP32: %zu tokens, %d windows of 511, perplexity %.4f (README: 4.271), %.2f s (%.0f tokens/s batched)\n",
                ids.size(), ppl.windows, ppl.perplexity, t_ppl, static_cast<double>(ppl.scored) / t_ppl);

    const std::vector<int> bos{1};
    const auto gen = lowbit::generate_greedy(model, bos, 256);
    std::vector<int> all{1};
    all.insert(all.end(), gen.begin(), gen.end());
    std::printf("greedy from BOS (%zu tokens):\n%s\n", gen.size(), tok.decode(all).c_str());
    std::printf("decode: %.0f tokens/s (stories260K FP32, median of 5 x 256 steps)\n",
                decode_tokens_per_second(model, 256));

    if (large) {
        const lowbit::llama_config c{2048, 5632, 8, 32, 8, 512, 512};
        const auto big = lowbit::random_llama(c, 1);
        std::printf("decode: %.2f tokens/s (random-weight dim 2048 / hidden 5632 / 8 layers FP32, speed only, "
                    "median of 5 x 32 steps)\n",
                    decode_tokens_per_second(big, 32));
    }
    return 0;
} catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
}
