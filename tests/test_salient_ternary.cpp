// Tests for lowbit/salient_ternary.hpp and `pack_tra` (gptq.hpp). Oracles: the weight rule of the file
// comment decoded here from the raw code words (per row, chunk after chunk: P, N, G and, for chunks
// holding salient columns, P1, N1; salient weight (μ_sg + α0_sg·t0) + α1_sg·t1 from parameters 3g..3g+2,
// other weight μ_g + α_g·t0 from parameters 6 + 2g, 7 + 2g); for pack_tra the four kept E2M-ATQ fits of
// TRA-GPTQ with their parameters rounded to fp16 here; y = X·Wᵀ of those weights in long double, which
// every compiled ISA path and both the per-token and the batched paths must meet within the stated
// bound (n + 16)·u·Σ|w x|.
#include <lowbit/gptq.hpp>
#include <lowbit/salient_ternary.hpp>

#include <doctest/doctest.h>

#include "gaussian_matrix.hpp"
#include "gptq_problem.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <span>
#include <string>
#include <vector>

namespace {

using lowbit::kernel_isa;
using lowbit::matrix_d;
using lowbit::matrix_f;
using lowbit::salient_ternary_block;
using lowbit::salient_ternary_matrix;
using lowbit::vector_f;
using ld_matrix = Eigen::Matrix<long double, Eigen::Dynamic, Eigen::Dynamic>;

struct raw_layout {
    Eigen::Index rows = 0, cols = 0;
    std::vector<salient_ternary_block> blocks;
    std::vector<std::int32_t> source;
    std::vector<std::uint16_t> codes;
    vector_f params;

    [[nodiscard]] Eigen::Index words_per_row() const {
        Eigen::Index w = 0;
        for (const auto& b : blocks)
            for (Eigen::Index t = 0; t < (b.width + 15) / 16; ++t) w += 16 * t < b.salient ? 5 : 3;
        return w;
    }
};

// Blocks of the given widths, salient counts drawn in [0, width] (or as given), a random column map,
// random valid codes (t0, t1 uniform in {−1, 0, 1}, g uniform; nothing on padding, t1 only on salient
// columns) and random fp16 parameters.
raw_layout random_layout(Eigen::Index rows, const std::vector<Eigen::Index>& widths, std::uint64_t seed,
                         std::vector<Eigen::Index> salient = {}) {
    std::mt19937_64 rng(seed);
    raw_layout r;
    r.rows = rows;
    r.cols = std::accumulate(widths.begin(), widths.end(), Eigen::Index{0});
    std::vector<std::int32_t> perm(static_cast<std::size_t>(r.cols));
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng);
    std::size_t next = 0;
    for (std::size_t b = 0; b < widths.size(); ++b) {
        const Eigen::Index w = widths[b];
        const Eigen::Index k = b < salient.size() ? salient[b] : static_cast<Eigen::Index>(rng() % static_cast<std::uint64_t>(w + 1));
        r.blocks.push_back({w, k});
        const Eigen::Index padded = (w + 15) / 16 * 16;
        for (Eigen::Index t = 0; t < padded; ++t) r.source.push_back(t < w ? perm[next++] : -1);
    }
    for (Eigen::Index i = 0; i < rows; ++i)
        for (const auto& b : r.blocks)
            for (Eigen::Index c = 0; c < (b.width + 15) / 16; ++c) {
                std::uint16_t p[5] = {};
                for (int l = 0; l < 16; ++l) {
                    const Eigen::Index t = 16 * c + l;
                    if (t >= b.width) break;
                    const int t0 = static_cast<int>(rng() % 3) - 1, g = static_cast<int>(rng() % 2);
                    const int t1 = t < b.salient ? static_cast<int>(rng() % 3) - 1 : 0;
                    p[0] |= static_cast<std::uint16_t>((t0 > 0 ? 1 : 0) << l);
                    p[1] |= static_cast<std::uint16_t>((t0 < 0 ? 1 : 0) << l);
                    p[2] |= static_cast<std::uint16_t>(g << l);
                    p[3] |= static_cast<std::uint16_t>((t1 > 0 ? 1 : 0) << l);
                    p[4] |= static_cast<std::uint16_t>((t1 < 0 ? 1 : 0) << l);
                }
                for (int q = 0; q < (16 * c < b.salient ? 5 : 3); ++q) r.codes.push_back(p[q]);
            }
    std::normal_distribution<float> gauss(0.0f, 1.0f);
    r.params.resize(rows * static_cast<Eigen::Index>(widths.size()) * 10);
    for (Eigen::Index e = 0; e < r.params.size(); ++e) r.params(e) = static_cast<float>(Eigen::half(gauss(rng)));
    return r;
}

salient_ternary_matrix make(const raw_layout& r) { return salient_ternary_matrix(r.rows, r.cols, r.blocks, r.source, r.codes, r.params); }

// The weights by the file comment's rule, decoded from the raw layout (float evaluation, as specified).
matrix_f reference_weights(const raw_layout& r) {
    matrix_f w = matrix_f::Constant(r.rows, r.cols, std::nanf(""));
    const auto nb = static_cast<Eigen::Index>(r.blocks.size());
    const Eigen::Index stride = r.words_per_row();
    for (Eigen::Index i = 0; i < r.rows; ++i) {
        Eigen::Index p0 = 0, word = i * stride;
        for (Eigen::Index b = 0; b < nb; ++b) {
            const auto& blk = r.blocks[static_cast<std::size_t>(b)];
            const float* prm = r.params.data() + (i * nb + b) * 10;
            for (Eigen::Index c = 0; c < (blk.width + 15) / 16; ++c) {
                const bool sal_chunk = 16 * c < blk.salient;
                const std::uint16_t* wp = r.codes.data() + word;
                for (int l = 0; l < 16 && 16 * c + l < blk.width; ++l) {
                    const Eigen::Index t = 16 * c + l;
                    const int t0 = ((wp[0] >> l) & 1) - ((wp[1] >> l) & 1), g = (wp[2] >> l) & 1;
                    float v;
                    if (t < blk.salient) {
                        const int t1 = ((wp[3] >> l) & 1) - ((wp[4] >> l) & 1);
                        const float a = prm[3 * g] + prm[3 * g + 1] * static_cast<float>(t0);
                        v = a + prm[3 * g + 2] * static_cast<float>(t1);
                    } else {
                        v = prm[6 + 2 * g] + prm[7 + 2 * g] * static_cast<float>(t0);
                    }
                    w(i, r.source[static_cast<std::size_t>(p0 + t)]) = v;
                }
                word += sal_chunk ? 5 : 3;
            }
            p0 += (blk.width + 15) / 16 * 16;
        }
    }
    return w;
}

std::vector<kernel_isa> paths() {
    std::vector<kernel_isa> p{kernel_isa::scalar, kernel_isa::generic, kernel_isa::automatic};
    for (const auto isa : {kernel_isa::avx2, kernel_isa::avx512, kernel_isa::amx})
        if (lowbit::isa_available(isa)) p.push_back(isa);
    return p;
}

// gemm of m on every path and token count against the long double product of w (its float weights).
void check_gemm(const salient_ternary_matrix& m, const matrix_f& w, std::uint64_t seed) {
    const long double n = static_cast<long double>(m.padded_cols()), u = std::ldexp(1.0L, -24);
    const ld_matrix wl = w.cast<long double>();
    for (const Eigen::Index tokens : {1, 3, 4, 5, 8, 13, 40}) {
        const matrix_f x = lowbit_test::gaussian(tokens, m.cols(), seed + static_cast<std::uint64_t>(tokens));
        const ld_matrix xl = x.cast<long double>();
        const ld_matrix exact = xl * wl.transpose();
        const ld_matrix bound = (n + 16) * u * (xl.cwiseAbs() * wl.cwiseAbs().transpose());
        for (const kernel_isa isa : paths()) {
            CAPTURE(tokens);
            const std::string isa_text(lowbit::isa_name(isa));
            CAPTURE(isa_text);
            const matrix_f y = lowbit::gemm(m, x, lowbit::act_fp32{}, isa);
            REQUIRE(y.rows() == tokens);
            REQUIRE(y.cols() == m.rows());
            CHECK(((y.cast<long double>() - exact).cwiseAbs().array() <= bound.array()).all());
        }
    }
}

} // namespace

TEST_CASE("salient_ternary: dequantize follows the weight rule (planes P, N, G, P1, N1; 10 parameters per row and block)") {
    for (const auto& widths : {std::vector<Eigen::Index>{128, 128, 64}, std::vector<Eigen::Index>{128, 44},
                               std::vector<Eigen::Index>{7}, std::vector<Eigen::Index>{300}, std::vector<Eigen::Index>{16, 1}}) {
        const raw_layout r = random_layout(9, widths, 11 + static_cast<std::uint64_t>(widths.size()));
        const salient_ternary_matrix m = make(r);
        const matrix_f ref = reference_weights(r);
        REQUIRE(ref.allFinite());
        CHECK(m.dequantize() == ref);
        CHECK(m.params() == r.params);
        CHECK(m.row_words() == r.words_per_row());
    }
}

TEST_CASE("salient_ternary: gemm on every path and token count within (n + 16)·u·Σ|w x| of the long double product") {
    // cols a multiple of 128, not of 128, not of 16; no salient column, every column salient
    for (const auto& [widths, salient] : std::vector<std::pair<std::vector<Eigen::Index>, std::vector<Eigen::Index>>>{
             {{128, 128, 44}, {}}, {{128, 72}, {0, 72}}, {{37}, {5}}, {{128}, {33}}, {{300}, {}}}) {
        const raw_layout r = random_layout(37, widths, 5 + static_cast<std::uint64_t>(widths.size()), salient);
        const salient_ternary_matrix m = make(r);
        check_gemm(m, reference_weights(r), 100);
    }
}

TEST_CASE("salient_ternary: the vector paths decode the same weights as the reference (batched path bit-exact per row)") {
    // tokens that are unit vectors (16 at a time: the batched path, and 5 for the last: the row kernels):
    // y(k, i) = w(i, k0 + k) exactly on every path
    const raw_layout r = random_layout(3, {128, 21}, 31, {40, 3});
    const salient_ternary_matrix m = make(r);
    const matrix_f w = reference_weights(r);
    for (Eigen::Index k0 = 0; k0 < r.cols; k0 += 16) {
        const Eigen::Index nt = std::min<Eigen::Index>(16, r.cols - k0);
        matrix_f x = matrix_f::Zero(nt, r.cols);
        for (Eigen::Index k = 0; k < nt; ++k) x(k, k0 + k) = 1.0f;
        for (const kernel_isa isa : paths()) {
            const std::string isa_text(lowbit::isa_name(isa));
            CAPTURE(isa_text);
            const matrix_f y = lowbit::gemm(m, x, lowbit::act_fp32{}, isa);
            CHECK(y == w.middleCols(k0, nt).transpose());
        }
    }
}

TEST_CASE("salient_ternary: gemm_into reuses its workspace with the same results; quantized_linear runs it") {
    const raw_layout r = random_layout(20, {64, 64}, 8);
    const salient_ternary_matrix m = make(r);
    const matrix_f x = lowbit_test::gaussian(3, r.cols, 9);
    lowbit::salient_ternary_workspace ws;
    matrix_f y1(3, 20), y2(3, 20);
    lowbit::gemm_into(m, x, lowbit::act_fp32{}, y1, ws);
    lowbit::gemm_into(m, x, lowbit::act_fp32{}, y2, ws);
    CHECK(y1 == y2);
    const lowbit::quantized_linear<salient_ternary_matrix> lin(m);
    matrix_f y3;
    lin.apply(x, y3);
    CHECK(y3 == y1);
    CHECK(lin.storage_bits() == doctest::Approx(m.storage_bits()));
    // integer activations: the fp32 kernel on the per-token quantize-dequantize grid
    const lowbit::quantized_linear<salient_ternary_matrix, lowbit::act_int> lin6(m, lowbit::act_int{6});
    matrix_f y4;
    lin6.apply(x, y4);
    CHECK(y4 == lowbit::gemm(m, lowbit::detail::int_fake_quantize(x, 6)));
}

TEST_CASE("salient_ternary: bytes round trip and storage bits count exactly the serialized bytes and the parameters") {
    const raw_layout r = random_layout(6, {128, 44}, 3, {20, 0}); // block 0: chunks 0 and 1 hold salient columns
    const salient_ternary_matrix m = make(r);
    const std::vector<std::uint8_t> b = m.bytes();
    CHECK(m.storage_bits() == 8.0 * static_cast<double>(b.size()) + 16.0 * static_cast<double>(r.params.size()));
    CHECK(r.params.size() == 6 * 2 * 10);
    // count, flags, 2 blocks, the map of 176 positions (128 + 44 padded to 48), 6 rows of 11 chunks × 3
    // words and 2 salient chunks × 2 words
    CHECK(b.size() == 4 + 4 + 2 * 4 + 2 * 176 + 6 * (11 * 3 + 2 * 2) * 2);
    const salient_ternary_matrix back = salient_ternary_matrix::from_bytes(6, r.cols, b, m.params());
    CHECK(back.bytes() == b);
    CHECK(back.codes() == m.codes());
    CHECK(back.source() == m.source());
    CHECK(back.params() == m.params());
    CHECK(back.dequantize() == m.dequantize());
    CHECK(back.storage_bits() == m.storage_bits());
}

TEST_CASE("salient_ternary: bad input is refused with a clear exception") {
    const raw_layout r = random_layout(4, {32, 20}, 21, {17, 0}); // block 0: chunks 0, 1 salient (5 words each)
    auto with = [&](auto edit) {
        raw_layout c = r;
        edit(c);
        return c;
    };
    REQUIRE(r.words_per_row() == 5 + 5 + 3 + 3);
    CHECK_THROWS_AS(make(with([](raw_layout& c) { c.codes.pop_back(); })), lowbit::shape_error);
    CHECK_THROWS_AS(make(with([](raw_layout& c) { c.params.conservativeResize(c.params.size() - 1); })), lowbit::shape_error);
    CHECK_THROWS_AS(make(with([](raw_layout& c) { c.params(3) = std::nanf(""); })), lowbit::numeric_error);
    CHECK_THROWS_AS(make(with([](raw_layout& c) { c.params(3) = std::numeric_limits<float>::infinity(); })), lowbit::numeric_error);
    CHECK_THROWS_AS(make(with([](raw_layout& c) { c.params(3) = 0.1f; })), lowbit::invalid_argument); // not fp16-exact
    CHECK_THROWS_AS(make(with([](raw_layout& c) { c.source[1] = c.source[0]; })), lowbit::invalid_argument);
    CHECK_THROWS_AS(make(with([](raw_layout& c) { c.source[55] = 0; })), lowbit::invalid_argument); // padding slot
    CHECK_THROWS_AS(make(with([](raw_layout& c) { c.blocks[0].salient = 33; })), lowbit::shape_error);
    CHECK_THROWS_AS(make(with([](raw_layout& c) { c.blocks[1].width = 19; })), lowbit::shape_error);
    CHECK_THROWS_AS(make(with([](raw_layout& c) { c.rows = 0; })), lowbit::shape_error);
    // plane rules (row 0: words 0..4 chunk 0, 5..9 chunk 1, 10..12 chunk 2 (block 1), 13..15 chunk 3 (lanes 0..3 real))
    CHECK_THROWS_AS(make(with([](raw_layout& c) { c.codes[0] = c.codes[1] = 1; })), lowbit::invalid_argument);   // P ∧ N
    CHECK_THROWS_AS(make(with([](raw_layout& c) { c.codes[3] = c.codes[4] = 4; })), lowbit::invalid_argument);   // P1 ∧ N1
    CHECK_THROWS_AS(make(with([](raw_layout& c) { c.codes[5 + 3] |= 2; })), lowbit::invalid_argument);           // t1 on column 17 (not salient)
    CHECK_THROWS_AS(make(with([](raw_layout& c) { c.codes[15] |= 0x10; })), lowbit::invalid_argument);          // G on padding lane 4
    CHECK_THROWS_AS(make(with([](raw_layout& c) { c.codes[13] |= 0x8000; })), lowbit::invalid_argument);        // P on padding lane 15
    CHECK_NOTHROW(make(with([](raw_layout& c) { // t1 = +1 on column 16 (salient): valid
        c.codes[5 + 3] = 1;
        c.codes[5 + 4] = 0;
    })));
    const salient_ternary_matrix m = make(r);
    const std::vector<std::uint8_t> b = m.bytes();
    for (std::size_t len = 0; len < b.size(); ++len) {
        CAPTURE(len);
        CHECK_THROWS_AS((void)salient_ternary_matrix::from_bytes(4, r.cols, std::span(b.data(), len), m.params()), lowbit::format_error);
    }
    std::vector<std::uint8_t> longer = b;
    longer.push_back(0);
    CHECK_THROWS_AS((void)salient_ternary_matrix::from_bytes(4, r.cols, longer, m.params()), lowbit::format_error);
    std::vector<std::uint8_t> corrupt = b;
    corrupt[8] = 33; // first block width 33: the widths no longer match the column map
    CHECK_THROWS_AS((void)salient_ternary_matrix::from_bytes(4, r.cols, corrupt, m.params()), lowbit::format_error);
    corrupt = b;
    corrupt[16 + 2] = corrupt[16]; // the column map names a column twice
    corrupt[16 + 3] = corrupt[17];
    CHECK_THROWS_AS((void)salient_ternary_matrix::from_bytes(4, r.cols, corrupt, m.params()), lowbit::format_error);
    corrupt = b;
    corrupt[4] = 1; // an unknown flag
    CHECK_THROWS_AS((void)salient_ternary_matrix::from_bytes(4, r.cols, corrupt, m.params()), lowbit::format_error);
    corrupt = b;
    const std::size_t codes_at = 8 + 8 + 2 * (32 + 32);
    corrupt[codes_at] = 0xFF; // P of chunk 0, lanes 0..7 ...
    corrupt[codes_at + 2] = 0xFF; // ... and N of the same lanes: P ∧ N
    CHECK_THROWS_AS((void)salient_ternary_matrix::from_bytes(4, r.cols, corrupt, m.params()), lowbit::format_error);
    corrupt = b;
    corrupt[0] = 0; // no blocks
    CHECK_THROWS_AS((void)salient_ternary_matrix::from_bytes(4, r.cols, corrupt, m.params()), lowbit::format_error);
    vector_f bad = m.params();
    bad(0) = std::nanf("");
    CHECK_THROWS_AS((void)salient_ternary_matrix::from_bytes(4, r.cols, b, bad), lowbit::format_error);
    bad = m.params();
    bad.conservativeResize(bad.size() + 1);
    bad(bad.size() - 1) = 0;
    CHECK_THROWS_AS((void)salient_ternary_matrix::from_bytes(4, r.cols, b, bad), lowbit::format_error);
    CHECK_THROWS_AS((void)salient_ternary_matrix::from_bytes(5, r.cols, b, m.params()), lowbit::format_error); // rows disagree
    CHECK_THROWS_AS((void)salient_ternary_matrix::from_bytes(0, r.cols, b, m.params()), lowbit::shape_error);
    matrix_f x = lowbit_test::gaussian(2, r.cols, 4);
    CHECK_THROWS_AS((void)lowbit::gemm(m, lowbit_test::gaussian(2, r.cols + 1, 4)), lowbit::shape_error);
    x(1, 3) = std::numeric_limits<float>::infinity();
    CHECK_THROWS_AS((void)lowbit::gemm(m, x), lowbit::numeric_error);
    x(1, 3) = std::nanf("");
    CHECK_THROWS_AS((void)lowbit::gemm(m, x), lowbit::numeric_error);
    CHECK_THROWS_AS((void)lowbit::gemm(m, matrix_f(0, r.cols)), lowbit::shape_error);
    lowbit::salient_ternary_workspace ws;
    matrix_f y(2, 5);
    CHECK_THROWS_AS(lowbit::gemm_into(m, lowbit_test::gaussian(2, r.cols, 4), lowbit::act_fp32{}, y, ws), lowbit::shape_error);
}

TEST_CASE("pack_tra: the packed layout dequantizes to TRA-GPTQ's fits with fp16 parameters, and to its weights") {
    // 200 columns: blocks of 128 and 72 (padding to 80); act order permutes the columns
    const matrix_f x = lowbit_test::correlated_inputs(512, 200, 71);
    const matrix_d h = lowbit_test::hessian_of(x);
    const matrix_f w = lowbit_test::random_weights(12, 200, 72);
    for (const bool act_order : {false, true}) {
        CAPTURE(act_order);
        lowbit::tra_gptq_options opt;
        opt.keep_codes = true;
        opt.salient_candidates = 24;
        opt.quantile_steps = 9;
        opt.gptq.act_order = act_order;
        const auto r = lowbit::tra_gptq_quantize(w, h, opt);
        const salient_ternary_matrix p = lowbit::pack_tra(r);
        REQUIRE(p.rows() == 12);
        REQUIRE(p.cols() == 200);
        REQUIRE(p.padded_cols() == 208);
        REQUIRE(r.blocks.size() == 2);
        // oracle from the fits: the fit whose mask holds the weight, its parameters rounded to fp16 here
        auto h16 = [](float v) { return static_cast<float>(Eigen::half(v)); };
        matrix_f want(12, 200), s_mass(12, 200);
        for (const auto& b : r.blocks) {
            REQUIRE(b.fits.size() == 4);
            for (Eigen::Index i = 0; i < 12; ++i)
                for (Eigen::Index j = 0; j < b.width; ++j) {
                    int g = -1;
                    for (int f = 0; f < 4; ++f)
                        if (b.fits[static_cast<std::size_t>(f)].mask(i, j)) g = f;
                    REQUIRE(g >= 0);
                    const auto& f = b.fits[static_cast<std::size_t>(g)];
                    const float t0 = f.codes[0](i, j), t1 = f.codes[1](i, j);
                    const float a = h16(f.mean(i)) + h16(f.alpha[0](i)) * t0;
                    const Eigen::Index col = r.order[static_cast<std::size_t>(b.begin + j)];
                    want(i, col) = a + h16(f.alpha[1](i)) * t1;
                    s_mass(i, col) = std::abs(f.mean(i)) + std::abs(f.alpha[0](i)) + std::abs(f.alpha[1](i));
                }
            CHECK(p.blocks()[static_cast<std::size_t>(&b - r.blocks.data())].salient == static_cast<Eigen::Index>(b.salient.size()));
        }
        const matrix_f d = p.dequantize();
        CHECK(d == want);
        // and the result's weights within the fp16 bound of pack_tra's contract
        const Eigen::ArrayXXd err = (d.cast<double>() - r.weights.cast<double>()).array().abs();
        CHECK((err <= (std::ldexp(1.0, -11) + std::ldexp(1.0, -21)) * s_mass.cast<double>().array() + std::ldexp(1.0, -23)).all());
        CHECK(err.maxCoeff() > 0.0); // the rounding is real (the check above is not vacuous)
        // storage: 3 words per chunk, 2 more per chunk holding salient columns, 10 fp16 per row and block,
        // count, flags, 2 × 2 uint16 per block, the uint16 map
        double words = 0.0;
        for (const auto& b : r.blocks)
            words += 3.0 * static_cast<double>((b.width + 15) / 16) + 2.0 * std::ceil(static_cast<double>(b.salient.size()) / 16.0);
        CHECK(p.bits_per_weight() == doctest::Approx((12.0 * (16.0 * words + 2 * 160.0) + 8.0 * (4 + 4 + 8 + 416)) / 2400.0));
        check_gemm(p, d, 300);
    }
    lowbit::tra_gptq_options opt; // no kept codes: refused
    opt.salient_candidates = 4;
    opt.quantile_steps = 3;
    CHECK_THROWS_AS((void)lowbit::pack_tra(lowbit::tra_gptq_quantize(w, h, opt)), lowbit::invalid_argument);
}

TEST_CASE("pack_tra: corrupted kept fits are refused") {
    const matrix_f x = lowbit_test::correlated_inputs(128, 40, 5);
    const matrix_d h = lowbit_test::hessian_of(x);
    const matrix_f w = lowbit_test::random_weights(4, 40, 6);
    lowbit::tra_gptq_options opt;
    opt.keep_codes = true;
    opt.salient_candidates = 6;
    opt.quantile_steps = 3;
    const auto r = lowbit::tra_gptq_quantize(w, h, opt);
    CHECK_NOTHROW((void)lowbit::pack_tra(r));
    auto bad = r;
    bad.blocks[0].fits[0].mask.setConstant(false);
    bad.blocks[0].fits[1].mask.setConstant(false); // salient weights in no group
    CHECK_THROWS_AS((void)lowbit::pack_tra(bad), lowbit::invalid_argument);
    bad = r;
    bad.blocks[0].fits[2].codes[0](0, 0) = 2; // a code outside {−1, 0, 1} (wherever column 0 lies)
    bad.blocks[0].fits[3].codes[0](0, 0) = 2;
    bad.blocks[0].fits[0].codes[0](0, 0) = 2;
    bad.blocks[0].fits[1].codes[0](0, 0) = 2;
    CHECK_THROWS_AS((void)lowbit::pack_tra(bad), lowbit::invalid_argument);
    bad = r;
    bad.blocks[0].fits[2].mask.conservativeResize(4, 3); // wrong shape
    CHECK_THROWS_AS((void)lowbit::pack_tra(bad), lowbit::invalid_argument);
    bad = r;
    bad.blocks[0].fits[0].mean(0) = 1e6f; // beyond fp16's range
    bad.blocks[0].fits[2].mean(0) = 1e6f;
    CHECK_THROWS_AS((void)lowbit::pack_tra(bad), lowbit::numeric_error);
}
