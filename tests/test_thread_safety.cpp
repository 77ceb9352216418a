// The thread-safety contract (docs/reliability.md): a const `llama_model` and a const packed matrix
// may be used from several threads at once — forward passes (each thread its own kv_cache),
// perplexity and GEMV/GEMM read them only. Oracle: on the real stories260K checkpoint, two
// std::threads running forward, perplexity and packed GEMV on the same const objects at the same time
// reproduce the single-threaded results bit for bit. A ThreadSanitizer build of this test checks for
// data races (docs/reliability.md gives the command; .ci/run runs it).
#include <lowbit/gemm.hpp>
#include <lowbit/io/llama2c.hpp>
#include <lowbit/io/tokenizer.hpp>
#include <lowbit/model/llama.hpp>
#include <lowbit/pack.hpp>
#include <lowbit/quantized_linear.hpp>

#include "models.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>
#include <thread>
#include <vector>

namespace {

using lowbit::matrix_f;
using lowbit::vector_f;

/// int4 codes and per-row scales of a float weight (symmetric round to nearest, max|w|/7).
lowbit::packed_matrix<lowbit::int4> int4_of(const matrix_f& w) {
    lowbit::matrix_i8 t(w.rows(), w.cols());
    vector_f s(w.rows());
    for (Eigen::Index i = 0; i < w.rows(); ++i) {
        s(i) = std::max(w.row(i).cwiseAbs().maxCoeff() / 7.0f, 1e-8f);
        for (Eigen::Index j = 0; j < w.cols(); ++j)
            t(i, j) = static_cast<std::int8_t>(std::clamp(std::nearbyint(w(i, j) / s(i)), -8.0f, 7.0f));
    }
    return lowbit::pack<lowbit::int4>(t, s);
}

/// Everything one thread computes on the shared const objects.
struct results {
    matrix_f logits, logits_q;
    double ppl = 0, ppl_q = 0;
    vector_f gemv_int, gemv_fp32, gemv_tiled;
    matrix_f gemm_int;
    bool operator==(const results&) const = default;
};

struct shared_inputs {
    lowbit::llama_model fp32, int4; // the second with packed int4 GEMV kernels in every block linear
    lowbit::packed_matrix<lowbit::int4> w;
    lowbit::interleaved_matrix<lowbit::int4> w_tiled;
    std::vector<int> tokens;
    vector_f x;
    matrix_f xs;
};

const shared_inputs& inputs() {
    static const shared_inputs in = [] {
        shared_inputs s;
        const auto ck = lowbit::io::read_llama2c(lowbit_test::stories260k("stories260K.bin"));
        s.fp32 = lowbit::model_from_llama2c(ck);
        s.int4 = lowbit::model_from_llama2c(ck);
        for (int l = 0; l < s.int4.config.n_layers; ++l)
            for (auto slot : {lowbit::linear_slot::wq, lowbit::linear_slot::wk, lowbit::linear_slot::wv, lowbit::linear_slot::wo,
                              lowbit::linear_slot::w1, lowbit::linear_slot::w2, lowbit::linear_slot::w3}) {
                const auto& lw = ck.layers[static_cast<std::size_t>(l)];
                const matrix_f& w = slot == lowbit::linear_slot::wq   ? lw.wq
                                    : slot == lowbit::linear_slot::wk ? lw.wk
                                    : slot == lowbit::linear_slot::wv ? lw.wv
                                    : slot == lowbit::linear_slot::wo ? lw.wo
                                    : slot == lowbit::linear_slot::w1 ? lw.w1
                                    : slot == lowbit::linear_slot::w2 ? lw.w2
                                                                      : lw.w3;
                s.int4.set_linear(l, slot, lowbit::make_linear(lowbit::quantized_linear(int4_of(w), lowbit::act_int{8})));
            }
        s.w = int4_of(ck.layers[0].w1);
        s.w_tiled = lowbit::interleave(s.w);
        const auto tok = lowbit::io::read_tokenizer(lowbit_test::stories260k("tok512.bin"));
        std::ifstream f(lowbit_test::stories260k("tinystories_dev.txt"), std::ios::binary);
        std::stringstream ss;
        ss << f.rdbuf();
        s.tokens = tok.encode(ss.str().substr(0, 3000), false, false, lowbit::io::dummy_prefix::separate);
        s.x = ck.token_embedding.row(17).transpose();
        s.xs = ck.token_embedding.topRows(5);
        return s;
    }();
    return in;
}

/// The work of one thread; `order` rotates which part starts first so the threads overlap
/// different operations.
results compute(const shared_inputs& in, int order) {
    results r;
    const std::span<const int> prompt(in.tokens.data(), 48);
    auto forward_part = [&] {
        lowbit::kv_cache c(in.fp32.config), cq(in.int4.config);
        r.logits = lowbit::forward(in.fp32, c, prompt);
        r.logits_q = lowbit::forward(in.int4, cq, prompt);
    };
    auto perplexity_part = [&] {
        r.ppl = lowbit::perplexity(in.fp32, in.tokens, 255, 2).perplexity;
        r.ppl_q = lowbit::perplexity(in.int4, in.tokens, 255, 2).perplexity;
    };
    auto gemv_part = [&] {
        r.gemv_int = lowbit::gemv(in.w, in.x, lowbit::act_int{8});
        r.gemv_fp32 = lowbit::gemv(in.w, in.x, lowbit::act_fp32{});
        r.gemv_tiled = lowbit::gemv(in.w_tiled, in.x, lowbit::act_int{8});
        r.gemm_int = lowbit::gemm(in.w, in.xs, lowbit::act_int{8});
    };
    const std::function<void()> parts[3] = {forward_part, perplexity_part, gemv_part};
    for (int k = 0; k < 3; ++k) parts[(k + order) % 3]();
    return r;
}

} // namespace

TEST_CASE("two threads on one const model and one const packed matrix reproduce the single-threaded results exactly") {
    const shared_inputs& in = inputs();
    REQUIRE(in.tokens.size() > 600);
    const results single = compute(in, 0);
    CHECK(std::isfinite(single.ppl));
    CHECK(single.ppl_q > single.ppl * 0.9); // int4 is a real (different) model
    CHECK(single.logits.rows() == 48);
    CHECK(single.gemv_tiled == single.gemv_int);
    for (int round = 0; round < 2; ++round) {
        results a, b;
        std::thread ta([&] { a = compute(in, round); });
        std::thread tb([&] { b = compute(in, round + 1); });
        ta.join();
        tb.join();
        CHECK(a.logits == single.logits);
        CHECK(b.logits == single.logits);
        CHECK(a.logits_q == single.logits_q);
        CHECK(b.logits_q == single.logits_q);
        CHECK(a.ppl == single.ppl);
        CHECK(b.ppl == single.ppl);
        CHECK(a.ppl_q == single.ppl_q);
        CHECK(b.ppl_q == single.ppl_q);
        CHECK(a.gemv_int == single.gemv_int);
        CHECK(b.gemv_fp32 == single.gemv_fp32);
        CHECK(a.gemm_int == single.gemm_int);
        CHECK(b.gemv_tiled == single.gemv_tiled);
        CHECK(a == b);
    }
}

TEST_CASE("perplexity's own window threads over one const model equal the serial result") {
    const shared_inputs& in = inputs();
    lowbit::perplexity_options o;
    o.window = 127;
    o.max_windows = 4;
    const double serial = lowbit::perplexity(in.int4, in.tokens, o).perplexity;
    o.threads = 2;
    CHECK(lowbit::perplexity(in.int4, in.tokens, o).perplexity == serial);
}
