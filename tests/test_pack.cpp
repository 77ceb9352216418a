// Tests for lowbit/pack.hpp. Oracles: hand-worked bytes of each documented block layout, the
// original codes (round trips), an exhaustive check of all 3^5 trit combinations of base-3 bytes,
// and the closed-form storage size for bits_per_weight.
#include <lowbit/pack.hpp>

#include <doctest/doctest.h>

#include "random_codes.hpp"

#include <cmath>
#include <cstring>
#include <limits>
#include <random>

namespace {

using lowbit_test::random_codes;

template <class F>
void check_round_trip() {
    for (Eigen::Index cols : {1, 5, 172, 255, 256, 257, 319, 320, 321, 1000, 4544}) {
        const Eigen::Index rows = 3;
        const lowbit::matrix_i8 c = random_codes<F>(rows, cols, static_cast<std::uint64_t>(cols));
        lowbit::vector_f s(rows), mu(rows);
        s << 0.5f, 2.0f, 0.25f;
        mu << -1.0f, 0.0f, 3.0f;
        const auto w = lowbit::pack<F>(c, s, mu);
        CHECK(w.rows() == rows);
        CHECK(w.cols() == cols);
        CHECK(w.codes() == c);
        const lowbit::matrix_f dq = w.dequantize();
        for (Eigen::Index i = 0; i < rows; ++i)
            for (Eigen::Index j = 0; j < cols; ++j) CHECK(dq(i, j) == s(i) * static_cast<float>(c(i, j)) + mu(i));
        CHECK(w.padded_cols() % lowbit::pack_format<F>::block_weights == 0);
        CHECK(w.padded_cols() >= cols);
        CHECK(w.padded_cols() < cols + lowbit::pack_format<F>::block_weights);
        CHECK(reinterpret_cast<std::uintptr_t>(w.row_data(0)) % 64 == 0);
    }
}

} // namespace

TEST_CASE_TEMPLATE("pack/unpack round trip on awkward widths", F, lowbit::ternary2, lowbit::int2, lowbit::ternary_base3,
                   lowbit::binary1, lowbit::int4) {
    check_round_trip<F>();
}

TEST_CASE("ternary2 and int2 block layout, hand-worked") {
    lowbit::matrix_i8 c = lowbit::matrix_i8::Zero(1, 256);
    c(0, 0) = 1;    // u = 2
    c(0, 64) = -1;  // u = 0
    c(0, 128) = 0;  // u = 1
    c(0, 192) = 1;  // u = 2
    const auto w = lowbit::pack<lowbit::ternary2>(c, lowbit::vector_f::Ones(1));
    CHECK(static_cast<int>(w.row_data(0)[0]) == (2 | 0 << 2 | 1 << 4 | 2 << 6)); // 146
    CHECK(static_cast<int>(w.row_data(0)[1]) == 0x55);                          // all four t = 0 → u = 1
    c(0, 0) = -2; // int2: u = t + 2 = 0
    c(0, 64) = 1; // u = 3
    const auto w2 = lowbit::pack<lowbit::int2>(c, lowbit::vector_f::Ones(1));
    CHECK(static_cast<int>(w2.row_data(0)[0]) == (0 | 3 << 2 | 2 << 4 | 3 << 6));
    CHECK(static_cast<int>(w2.row_data(0)[1]) == 0xAA);
}

TEST_CASE("ternary_base3 block layout, hand-worked, and all 243 trit combinations") {
    lowbit::matrix_i8 c = lowbit::matrix_i8::Zero(1, 320);
    // u = (2, 0, 1, 2, 2) at columns 0, 64, 128, 192, 256: v = 2·81 + 0·27 + 1·9 + 2·3 + 2 = 179,
    // byte = ceil(179·256/243) = ceil(188.58) = 189.
    c(0, 0) = 1;
    c(0, 64) = -1;
    c(0, 128) = 0;
    c(0, 192) = 1;
    c(0, 256) = 1;
    const auto w = lowbit::pack<lowbit::ternary_base3>(c, lowbit::vector_f::Ones(1));
    CHECK(static_cast<int>(w.row_data(0)[0]) == 189);
    CHECK(static_cast<int>(w.row_data(0)[1]) == (121 * 256 + 242) / 243); // all t = 0: v = 121

    // byte j of block b holds combination 64b + j (digits base 3, most significant first)
    lowbit::matrix_i8 all = lowbit::matrix_i8::Zero(1, 4 * 320);
    for (int v = 0; v < 243; ++v) {
        const int b = v / 64, j = v % 64;
        int r = v;
        for (int k = 4; k >= 0; --k) {
            all(0, b * 320 + 64 * k + j) = static_cast<std::int8_t>(r % 3 - 1);
            r /= 3;
        }
    }
    const auto wa = lowbit::pack<lowbit::ternary_base3>(all, lowbit::vector_f::Ones(1));
    CHECK(wa.codes() == all);
    // the compare form of the digit rule used by the SIMD kernels equals ⌊3s/256⌋ for every byte
    for (int s = 0; s < 256; ++s) CHECK((3 * s) / 256 == int(s >= 86) + int(s >= 171));
}

TEST_CASE("binary1 and int4 block layout, hand-worked") {
    lowbit::matrix_i8 c = lowbit::matrix_i8::Constant(1, 256, -1);
    c(0, 0) = 1;
    c(0, 3) = 1;
    c(0, 255) = 1;
    const auto w = lowbit::pack<lowbit::binary1>(c, lowbit::vector_f::Ones(1));
    CHECK(static_cast<int>(w.row_data(0)[0]) == 0x09);
    CHECK(static_cast<int>(w.row_data(0)[31]) == 0x80);
    lowbit::matrix_i8 q = lowbit::matrix_i8::Zero(1, 256);
    q(0, 0) = -8;  // u = 0
    q(0, 128) = 7; // u = 15
    q(0, 1) = 3;   // u = 11
    const auto w4 = lowbit::pack<lowbit::int4>(q, lowbit::vector_f::Ones(1));
    CHECK(static_cast<int>(w4.row_data(0)[0]) == 0xF0);
    CHECK(static_cast<int>(w4.row_data(0)[1]) == (11 | 8 << 4));
}

TEST_CASE("bits_per_weight reports padding, scales and offsets") {
    const lowbit::matrix_i8 c = lowbit::matrix_i8::Zero(4096, 4096);
    const auto t2 = lowbit::pack<lowbit::ternary2>(c, lowbit::vector_f::Ones(4096));
    CHECK(t2.bits_per_weight() == doctest::Approx(2.0 + 32.0 / 4096));
    const auto t3 = lowbit::pack<lowbit::ternary_base3>(c, lowbit::vector_f::Ones(4096));
    CHECK(t3.bits_per_weight() == doctest::Approx(13.0 * 64 * 8 / 4096 + 32.0 / 4096)); // 13 blocks of 320
    const auto b1 = lowbit::pack<lowbit::binary1>(lowbit::matrix_i8::Ones(4096, 4096), lowbit::vector_f::Ones(4096),
                                                  lowbit::vector_f::Zero(4096));
    CHECK(b1.bits_per_weight() == doctest::Approx(1.0 + 64.0 / 4096));
    const auto i4 = lowbit::pack<lowbit::int4>(c.topRows(2).leftCols(172), lowbit::vector_f::Ones(2));
    CHECK(i4.bits_per_weight() == doctest::Approx((2.0 * 128 * 8 + 2 * 32) / (2.0 * 172)));
}

TEST_CASE("pack rejects bad input with lowbit errors") {
    const lowbit::vector_f one = lowbit::vector_f::Ones(2);
    lowbit::matrix_i8 c = lowbit::matrix_i8::Zero(2, 10);
    c(1, 7) = 2;
    CHECK_THROWS_AS((void)lowbit::pack<lowbit::ternary2>(c, one), lowbit::invalid_argument);
    CHECK_THROWS_WITH_AS((void)lowbit::pack<lowbit::ternary_base3>(c, one),
                         "lowbit: pack<ternary_base3>: argument 'codes' has value 2 at (1, 7), outside the format's code set",
                         lowbit::invalid_argument);
    CHECK_THROWS_AS((void)lowbit::pack<lowbit::binary1>(lowbit::matrix_i8::Zero(2, 10), one), lowbit::invalid_argument);
    c(1, 7) = 8;
    CHECK_THROWS_AS((void)lowbit::pack<lowbit::int4>(c, one), lowbit::invalid_argument);
    c(1, 7) = -3;
    CHECK_THROWS_AS((void)lowbit::pack<lowbit::int2>(c, one), lowbit::invalid_argument);
    c(1, 7) = 0;
    CHECK_THROWS_AS((void)lowbit::pack<lowbit::ternary2>(c, lowbit::vector_f::Ones(3)), lowbit::shape_error);
    CHECK_THROWS_AS((void)lowbit::pack<lowbit::ternary2>(c, one, lowbit::vector_f::Ones(1)), lowbit::shape_error);
    CHECK_THROWS_AS((void)lowbit::pack<lowbit::ternary2>(lowbit::matrix_i8(0, 4), lowbit::vector_f()), lowbit::shape_error);
    lowbit::vector_f bad = one;
    bad(1) = std::numeric_limits<float>::quiet_NaN();
    CHECK_THROWS_AS((void)lowbit::pack<lowbit::ternary2>(c, bad), lowbit::numeric_error);
    CHECK_THROWS_AS((void)lowbit::pack<lowbit::ternary2>(c, one, bad), lowbit::numeric_error);
    // raw bytes: wrong packed size
    using P = lowbit::packed_matrix<lowbit::ternary2>;
    CHECK_THROWS_AS(P(2, 10, P::buffer(127), one), lowbit::shape_error);
    CHECK_NOTHROW(P(2, 10, P::buffer(128), one));
    CHECK_THROWS_AS(P(0, 10, P::buffer(0), lowbit::vector_f()), lowbit::shape_error);
}

TEST_CASE_TEMPLATE("interleave/deinterleave round trip, 4-row tile layout", F, lowbit::ternary2, lowbit::int2,
                   lowbit::ternary_base3, lowbit::binary1, lowbit::int4) {
    using T = lowbit::pack_format<F>;
    for (Eigen::Index rows : {1, 3, 4, 5, 7, 9})
        for (Eigen::Index cols : {1, 172, 257, 4544, 13696}) {
            CAPTURE(rows);
            CAPTURE(cols);
            const lowbit::matrix_i8 c = random_codes<F>(rows, cols, static_cast<std::uint64_t>(rows * 7 + cols));
            const lowbit::vector_f s = lowbit::vector_f::LinSpaced(rows, 0.5f, 2.0f);
            const lowbit::vector_f mu = lowbit::vector_f::LinSpaced(rows, -1.0f, 1.0f);
            const auto w = lowbit::pack<F>(c, s, mu);
            const auto wi = lowbit::interleave(w);
            CHECK(wi.rows() == rows);
            CHECK(wi.cols() == cols);
            CHECK(wi.tiles() == (rows + 3) / 4);
            CHECK(static_cast<Eigen::Index>(wi.bytes().size()) == wi.tiles() * 4 * w.row_bytes());
            CHECK(wi.codes() == c);
            CHECK(wi.dequantize() == w.dequantize());
            CHECK(wi.scale() == s);
            CHECK(wi.offset() == mu);
            // block b of row i sits at tile i/4, position (4b + i%4)·block_bytes, byte for byte
            bool same = true;
            for (Eigen::Index i = 0; i < rows; ++i)
                for (Eigen::Index b = 0; b < w.blocks_per_row(); ++b) {
                    const std::uint8_t* q = wi.bytes().data() + (i / 4) * wi.tile_bytes() + (4 * b + i % 4) * T::block_bytes;
                    same = same && std::memcmp(q, w.block_data(i, b), T::block_bytes) == 0 && q == wi.block_data(i, b);
                }
            CHECK(same);
            const auto back = lowbit::deinterleave(wi);
            CHECK(back.bytes() == w.bytes());
            CHECK(back.offset() == mu);
            // padding rows decode to t = 0 (binary: −1), the pack padding digit
            if (rows % 4 != 0) {
                std::vector<std::uint8_t> u(T::block_weights);
                lowbit::detail::unpack_block<F>(wi.tile_data(wi.tiles() - 1) + 3 * T::block_bytes, u.data());
                CHECK(T::digit_mul * int(u[0]) - T::digit_offset == (T::digit_mul == 2 ? -1 : 0));
            }
            CHECK(wi.bits_per_weight() ==
                  doctest::Approx((8.0 * wi.tiles() * wi.tile_bytes() + 64.0 * rows) / (double(rows) * double(cols))));
            CHECK(reinterpret_cast<std::uintptr_t>(wi.tile_data(0)) % 64 == 0);
        }
}

TEST_CASE("interleaved_matrix rejects bad raw input with lowbit errors") {
    using I = lowbit::interleaved_matrix<lowbit::ternary2>;
    const lowbit::vector_f one = lowbit::vector_f::Ones(5);
    // 5 rows -> 2 tiles of 4 rows, 1 block of 64 bytes per row: 512 bytes
    CHECK_NOTHROW(I(5, 10, I::buffer(512), one));
    CHECK_THROWS_AS(I(5, 10, I::buffer(320), one), lowbit::shape_error); // row-major size is not enough
    CHECK_THROWS_AS(I(5, 10, I::buffer(512), lowbit::vector_f::Ones(4)), lowbit::shape_error);
    CHECK_THROWS_AS(I(5, 10, I::buffer(512), one, lowbit::vector_f::Ones(2)), lowbit::shape_error);
    CHECK_THROWS_AS(I(0, 10, I::buffer(0), lowbit::vector_f()), lowbit::shape_error);
    lowbit::vector_f bad = one;
    bad(3) = std::numeric_limits<float>::infinity();
    CHECK_THROWS_AS(I(5, 10, I::buffer(512), bad), lowbit::numeric_error);
    CHECK_THROWS_AS(I(5, 10, I::buffer(512), one, bad), lowbit::numeric_error);
}

TEST_CASE("grouped_int4_matrix: dequantize = α_{i,j/G}·t_ij + μ_{i,j/G}, nibble halves are the groups, bits, errors") {
    const Eigen::Index rows = 3, cols = 300; // groups of 128: 128, 128, 44; of 256: 256, 44
    const lowbit::matrix_i8 c = lowbit_test::random_codes<lowbit::int4>(rows, cols, 4);
    for (Eigen::Index gc : {128, 256}) {
        CAPTURE(gc);
        const Eigen::Index ng = (cols + gc - 1) / gc;
        lowbit::matrix_f al(rows, ng), mu(rows, ng);
        for (Eigen::Index i = 0; i < rows; ++i)
            for (Eigen::Index g = 0; g < ng; ++g) {
                al(i, g) = 0.25f * static_cast<float>(i + 1) + 0.5f * static_cast<float>(g); // fp16-exact
                mu(i, g) = -0.125f * static_cast<float>(g + i);
            }
        const auto w = lowbit::pack_grouped_int4(c, gc, al, mu);
        CHECK(w.rows() == rows);
        CHECK(w.cols() == cols);
        CHECK(w.groups() == ng);
        CHECK(w.codes().codes() == c);
        const lowbit::matrix_f d = w.dequantize();
        for (Eigen::Index i = 0; i < rows; ++i)
            for (Eigen::Index j = 0; j < cols; ++j)
                CHECK(d(i, j) == al(i, j / gc) * static_cast<float>(c(i, j)) + mu(i, j / gc));
        // 2 blocks of 128 bytes per row + 16 bits per scale and offset
        CHECK(w.bits_per_weight() == doctest::Approx((8.0 * rows * 256 + 32.0 * rows * ng) / (rows * cols)));
    }
    // byte j of block 0 holds column j (low nibble, group 0) and 128 + j (high nibble, group 1)
    lowbit::matrix_i8 one = lowbit::matrix_i8::Zero(1, 256);
    one(0, 5) = 7;
    one(0, 133) = -8;
    const auto w1 = lowbit::pack_grouped_int4(one, 128, lowbit::matrix_f::Ones(1, 2), lowbit::matrix_f::Zero(1, 2));
    CHECK(w1.codes().row_data(0)[5] == ((7 + 8) | ((-8 + 8) << 4)));
    CHECK(w1.bits_per_weight() == doctest::Approx(4.25));
    // errors
    const lowbit::matrix_f ones = lowbit::matrix_f::Ones(rows, 3);
    CHECK_THROWS_AS((void)lowbit::pack_grouped_int4(c, 64, lowbit::matrix_f::Ones(rows, 5), lowbit::matrix_f::Ones(rows, 5)),
                    lowbit::invalid_argument);
    CHECK_THROWS_AS((void)lowbit::pack_grouped_int4(c, 128, lowbit::matrix_f::Ones(rows, 2), ones), lowbit::shape_error);
    CHECK_THROWS_AS((void)lowbit::pack_grouped_int4(c, 128, ones, lowbit::matrix_f::Ones(rows + 1, 3)), lowbit::shape_error);
    lowbit::matrix_f not_half = ones;
    not_half(1, 1) = 0.1f; // not representable in fp16
    CHECK_THROWS_AS((void)lowbit::pack_grouped_int4(c, 128, not_half, ones), lowbit::invalid_argument);
    lowbit::matrix_f nan = ones;
    nan(0, 0) = std::numeric_limits<float>::quiet_NaN();
    CHECK_THROWS_AS((void)lowbit::pack_grouped_int4(c, 128, ones, nan), lowbit::numeric_error);
    lowbit::matrix_i8 bad = c;
    bad(2, 7) = 8;
    CHECK_THROWS_AS((void)lowbit::pack_grouped_int4(bad, 128, ones, ones), lowbit::invalid_argument);
    CHECK_THROWS_AS(lowbit::grouped_int4_matrix(lowbit::pack<lowbit::int4>(c, lowbit::vector_f::Constant(rows, 2.0f)), 128, ones, ones),
                    lowbit::invalid_argument);
}
