// Tests for lowbit/salient_binary.hpp. Oracles: the weight rule of the file comment decoded here from
// the raw code words (entry 4·[position < salient] + 2·p2 + p1 of the row's block table; p2 read from
// the row's p2 words, which exist for every chunk with `split` and only for chunks holding salient
// columns without it), and y = X·Wᵀ
// of those weights in double; every compiled ISA path and both the per-token and the batched paths
// must stay within the stated bound (n + 16)·u·Σ|w x|.
#include <lowbit/salient_binary.hpp>

#include <doctest/doctest.h>

#include <Eigen/Core>

#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <span>
#include <vector>

namespace {

using lowbit::kernel_isa;
using lowbit::matrix_f;
using lowbit::salient_binary_block;
using lowbit::salient_binary_matrix;
using lowbit::vector_f;

struct raw_layout {
    Eigen::Index rows = 0, cols = 0;
    std::vector<salient_binary_block> blocks;
    std::vector<std::int32_t> source;
    bool split = true;
    std::vector<std::uint16_t> codes;
    vector_f table;

    // chunks of block b (first chunk, count) and whether chunk t of block b stores a p2 word
    [[nodiscard]] bool has_p2(const salient_binary_block& b, Eigen::Index t) const { return split || 16 * t < b.salient; }
    [[nodiscard]] Eigen::Index words_per_row() const {
        Eigen::Index w = 0;
        for (const auto& b : blocks)
            for (Eigen::Index t = 0; t < (b.width + 15) / 16; ++t) w += 1 + (has_p2(b, t) ? 1 : 0);
        return w;
    }
};

// Blocks of the given widths, salient counts drawn in [0, width], a random column map, random codes
// (padding bits random too: the kernels must ignore them) and a random fp16 table.
raw_layout random_layout(Eigen::Index rows, const std::vector<Eigen::Index>& widths, std::uint64_t seed, bool split = true) {
    std::mt19937_64 rng(seed);
    raw_layout r;
    r.rows = rows;
    r.split = split;
    r.cols = std::accumulate(widths.begin(), widths.end(), Eigen::Index{0});
    std::vector<std::int32_t> perm(static_cast<std::size_t>(r.cols));
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng);
    std::size_t next = 0;
    for (const Eigen::Index w : widths) {
        r.blocks.push_back({w, static_cast<Eigen::Index>(rng() % static_cast<std::uint64_t>(w + 1))});
        const Eigen::Index padded = (w + 15) / 16 * 16;
        for (Eigen::Index t = 0; t < padded; ++t) r.source.push_back(t < w ? perm[next++] : -1);
    }
    for (Eigen::Index k = 0; k < rows * r.words_per_row(); ++k) r.codes.push_back(static_cast<std::uint16_t>(rng()));
    std::normal_distribution<float> g(0.0f, 1.0f);
    r.table.resize(rows * static_cast<Eigen::Index>(widths.size()) * 8);
    for (Eigen::Index e = 0; e < r.table.size(); ++e) r.table(e) = static_cast<float>(Eigen::half(g(rng)));
    return r;
}

salient_binary_matrix make(const raw_layout& r) {
    return salient_binary_matrix(r.rows, r.cols, r.blocks, r.source, r.split, r.codes, r.table);
}

// The weights by the file comment's rule, decoded from the raw layout.
Eigen::MatrixXd reference_weights(const raw_layout& r) {
    Eigen::MatrixXd w = Eigen::MatrixXd::Constant(r.rows, r.cols, std::nan(""));
    const auto chunks = static_cast<Eigen::Index>(r.source.size()) / 16;
    const auto nb = static_cast<Eigen::Index>(r.blocks.size());
    const Eigen::Index stride = r.words_per_row();
    for (Eigen::Index i = 0; i < r.rows; ++i) {
        Eigen::Index p0 = 0, p2_word = chunks; // the row's p2 words follow its `chunks` p1 words
        for (Eigen::Index b = 0; b < nb; ++b) {
            const auto& blk = r.blocks[static_cast<std::size_t>(b)];
            std::vector<Eigen::Index> p2_at; // word of each chunk's p2, −1: none
            for (Eigen::Index t = 0; t < (blk.width + 15) / 16; ++t) p2_at.push_back(r.has_p2(blk, t) ? p2_word++ : -1);
            for (Eigen::Index t = 0; t < blk.width; ++t) {
                const Eigen::Index p = p0 + t, q = p2_at[static_cast<std::size_t>(t / 16)];
                const std::uint16_t w1 = r.codes[static_cast<std::size_t>(i * stride + p / 16)];
                const std::uint16_t w2 = q >= 0 ? r.codes[static_cast<std::size_t>(i * stride + q)] : std::uint16_t{0};
                const int p1 = (w1 >> (p % 16)) & 1, p2 = (w2 >> (p % 16)) & 1;
                const int e = (t < blk.salient ? 4 : 0) + 2 * p2 + p1;
                w(i, r.source[static_cast<std::size_t>(p)]) = r.table((i * nb + b) * 8 + e);
            }
            p0 += (blk.width + 15) / 16 * 16;
        }
    }
    return w;
}

matrix_f random_x(Eigen::Index tokens, Eigen::Index n, std::uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> g(0.0f, 1.0f);
    matrix_f x(tokens, n);
    for (Eigen::Index k = 0; k < x.size(); ++k) x.data()[k] = g(rng);
    return x;
}

std::vector<kernel_isa> paths() {
    std::vector<kernel_isa> p{kernel_isa::scalar, kernel_isa::generic, kernel_isa::automatic};
    for (const auto isa : {kernel_isa::avx2, kernel_isa::avx512, kernel_isa::amx})
        if (lowbit::isa_available(isa)) p.push_back(isa);
    return p;
}

} // namespace

TEST_CASE("salient_binary: dequantize follows the weight rule (salient entries 4..7, p2 then p1), every column once") {
    for (const auto& widths : {std::vector<Eigen::Index>{128, 128, 64}, std::vector<Eigen::Index>{128, 44},
                               std::vector<Eigen::Index>{7}, std::vector<Eigen::Index>{300}}) {
        for (const bool split : {true, false}) {
            const raw_layout r = random_layout(9, widths, 11 + static_cast<std::uint64_t>(widths.size()), split);
            const salient_binary_matrix m = make(r);
            const Eigen::MatrixXd ref = reference_weights(r);
            REQUIRE(ref.allFinite());
            CHECK((m.dequantize().cast<double>() - ref).cwiseAbs().maxCoeff() == 0.0);
            CHECK(m.table() == r.table);
            CHECK(m.row_words() == r.words_per_row());
        }
    }
}

TEST_CASE("salient_binary: gemm on every path and token count within (n + 16)·u·Σ|w x| of the double product") {
  for (const bool split : {true, false}) {
    const raw_layout r = random_layout(37, {128, 128, 44}, 5, split);
    const salient_binary_matrix m = make(r);
    const Eigen::MatrixXd w = reference_weights(r);
    const double n = static_cast<double>(m.padded_cols()), u = std::ldexp(1.0, -24);
    for (const Eigen::Index tokens : {1, 3, 4, 5, 8, 13}) {
        const matrix_f x = random_x(tokens, r.cols, 100 + static_cast<std::uint64_t>(tokens));
        const Eigen::MatrixXd exact = x.cast<double>() * w.transpose();
        const Eigen::MatrixXd bound = (n + 16) * u * (x.cast<double>().cwiseAbs() * w.cwiseAbs().transpose());
        for (const kernel_isa isa : paths()) {
            CAPTURE(tokens);
            CAPTURE(lowbit::isa_name(isa));
            const matrix_f y = lowbit::gemm(m, x, lowbit::act_fp32{}, isa);
            REQUIRE(y.rows() == tokens);
            REQUIRE(y.cols() == r.rows);
            CHECK(((y.cast<double>() - exact).cwiseAbs().array() <= bound.array()).all());
        }
    }
  }
}

TEST_CASE("salient_binary: gemm_into reuses its workspace with the same results; quantized_linear runs it") {
    const raw_layout r = random_layout(20, {64, 64}, 8);
    const salient_binary_matrix m = make(r);
    const matrix_f x = random_x(3, r.cols, 9);
    lowbit::salient_binary_workspace ws;
    matrix_f y1(3, 20), y2(3, 20);
    lowbit::gemm_into(m, x, lowbit::act_fp32{}, y1, ws);
    lowbit::gemm_into(m, x, lowbit::act_fp32{}, y2, ws);
    CHECK(y1 == y2);
    const lowbit::quantized_linear<salient_binary_matrix> lin(m);
    matrix_f y3;
    lin.apply(x, y3);
    CHECK(y3 == y1);
    CHECK(lin.storage_bits() == doctest::Approx(m.storage_bits()));
    // integer activations: the fp32 kernel on the per-token quantize-dequantize grid
    const lowbit::quantized_linear<salient_binary_matrix, lowbit::act_int> lin6(m, lowbit::act_int{6});
    matrix_f y4;
    lin6.apply(x, y4);
    CHECK(y4 == lowbit::gemm(m, lowbit::detail::int_fake_quantize(x, 6)));
}

TEST_CASE("salient_binary: bytes round trip and storage bits count exactly the serialized bytes and the table") {
    for (const bool split : {true, false}) {
        raw_layout r = random_layout(6, {128, 44}, 3, split);
        r.blocks[0].salient = 20; // without split: p2 words for chunks 0 and 1 of block 0 only
        r.blocks[1].salient = 0;
        r.codes.resize(static_cast<std::size_t>(6 * r.words_per_row()), 0x5A5A);
        const salient_binary_matrix m = make(r);
        const std::vector<std::uint8_t> b = m.bytes();
        CHECK(m.storage_bits() == doctest::Approx(8.0 * static_cast<double>(b.size()) + 16.0 * static_cast<double>(r.table.size())));
        // count, flags, 2 blocks, the map of 176 positions (128 + 44 padded to 48), 6 rows of 11 p1 words
        // and 11 (split) or 2 p2 words
        CHECK(b.size() == 4 + 4 + 2 * 4 + 2 * 176 + 6 * (11 + (split ? 11 : 2)) * 2);
        const salient_binary_matrix back = salient_binary_matrix::from_bytes(6, r.cols, b, m.table());
        CHECK(back.split() == split);
        CHECK(back.codes() == m.codes());
        CHECK(back.source() == m.source());
        CHECK(back.dequantize() == m.dequantize());
    }
}

TEST_CASE("salient_binary: bad input is refused with a clear exception") {
    const raw_layout r = random_layout(4, {32, 20}, 21);
    auto with = [&](auto edit) {
        raw_layout c = r;
        edit(c);
        return c;
    };
    CHECK_THROWS_AS(make(with([](raw_layout& c) { c.codes.pop_back(); })), lowbit::shape_error);
    CHECK_THROWS_AS(make(with([](raw_layout& c) { c.table.conservativeResize(c.table.size() - 1); })), lowbit::shape_error);
    CHECK_THROWS_AS(make(with([](raw_layout& c) { c.table(3) = std::nanf(""); })), lowbit::numeric_error);
    CHECK_THROWS_AS(make(with([](raw_layout& c) { c.table(3) = 0.1f; })), lowbit::invalid_argument); // not fp16-exact
    CHECK_THROWS_AS(make(with([](raw_layout& c) { c.source[1] = c.source[0]; })), lowbit::invalid_argument);
    CHECK_THROWS_AS(make(with([](raw_layout& c) { c.source[55] = 0; })), lowbit::invalid_argument); // padding slot
    CHECK_THROWS_AS(make(with([](raw_layout& c) { c.blocks[0].salient = 33; })), lowbit::shape_error);
    CHECK_THROWS_AS(make(with([](raw_layout& c) { c.blocks[1].width = 19; })), lowbit::shape_error);
    CHECK_THROWS_AS(make(with([](raw_layout& c) { c.rows = 0; })), lowbit::shape_error);
    const salient_binary_matrix m = make(r);
    const std::vector<std::uint8_t> b = m.bytes();
    for (std::size_t len = 0; len < b.size(); ++len) {
        CAPTURE(len);
        CHECK_THROWS_AS((void)salient_binary_matrix::from_bytes(4, r.cols, std::span(b.data(), len), m.table()),
                        lowbit::format_error);
    }
    std::vector<std::uint8_t> corrupt = b;
    corrupt[8] = 33; // first block width 33: the widths no longer match the column map
    CHECK_THROWS_AS((void)salient_binary_matrix::from_bytes(4, r.cols, corrupt, m.table()), lowbit::format_error);
    corrupt = b;
    corrupt[16 + 2] = corrupt[16]; // the column map names a column twice
    corrupt[16 + 3] = corrupt[17];
    CHECK_THROWS_AS((void)salient_binary_matrix::from_bytes(4, r.cols, corrupt, m.table()), lowbit::format_error);
    vector_f bad_table = m.table();
    bad_table(0) = std::nanf("");
    CHECK_THROWS_AS((void)salient_binary_matrix::from_bytes(4, r.cols, b, bad_table), lowbit::format_error);
    corrupt = b;
    corrupt[4] = 2; // an unknown flag
    CHECK_THROWS_AS((void)salient_binary_matrix::from_bytes(4, r.cols, corrupt, m.table()), lowbit::format_error);
    matrix_f x = random_x(2, r.cols, 4);
    CHECK_THROWS_AS((void)lowbit::gemm(m, random_x(2, r.cols + 1, 4)), lowbit::shape_error);
    x(1, 3) = std::numeric_limits<float>::infinity();
    CHECK_THROWS_AS((void)lowbit::gemm(m, x), lowbit::numeric_error);
    CHECK_THROWS_AS((void)lowbit::gemm(m, matrix_f(0, r.cols)), lowbit::shape_error);
}
