// Tests for lowbit/granularity.hpp. Oracle: group tables worked by hand for each tail policy.
#include <lowbit/granularity.hpp>

#include <doctest/doctest.h>

#include <vector>

namespace {
using lowbit::column_group;
bool same(const std::vector<column_group>& a, const std::vector<column_group>& b) {
    if (a.size() != b.size()) return false;
    for (std::size_t i = 0; i < a.size(); ++i)
        if (a[i].begin != b[i].begin || a[i].width != b[i].width || a[i].padded_width != b[i].padded_width)
            return false;
    return true;
}
} // namespace

TEST_CASE("per_group splits 10 columns into groups of 4 by the tail policy") {
    using lowbit::tail_policy;
    CHECK(same(lowbit::column_groups(10, lowbit::per_group{4, tail_policy::smaller_last}, "t"),
               {{0, 4, 4}, {4, 4, 4}, {8, 2, 2}}));
    CHECK(same(lowbit::column_groups(10, lowbit::per_group{4, tail_policy::zero_pad}, "t"),
               {{0, 4, 4}, {4, 4, 4}, {8, 2, 4}}));
    CHECK_THROWS_AS((void)lowbit::column_groups(10, lowbit::per_group{4, tail_policy::error}, "t"),
                    lowbit::shape_error);
    CHECK_THROWS_WITH((void)lowbit::column_groups(10, lowbit::per_group{4}, "where"),
                      doctest::Contains("not a multiple of the group size 4"));
    CHECK(lowbit::group_count(10, lowbit::per_group{4}) == 3);
    CHECK(lowbit::group_width(10, lowbit::per_group{4}) == 4);
}

TEST_CASE("exact division, G = 1 and G > cols") {
    using lowbit::tail_policy;
    CHECK(same(lowbit::column_groups(8, lowbit::per_group{4}, "t"), {{0, 4, 4}, {4, 4, 4}}));
    const auto ones = lowbit::column_groups(3, lowbit::per_group{1}, "t");
    CHECK(same(ones, {{0, 1, 1}, {1, 1, 1}, {2, 1, 1}}));
    CHECK(same(lowbit::column_groups(3, lowbit::per_group{8, tail_policy::zero_pad}, "t"), {{0, 3, 8}}));
    CHECK(same(lowbit::column_groups(3, lowbit::per_group{8, tail_policy::smaller_last}, "t"), {{0, 3, 3}}));
    CHECK_THROWS_AS((void)lowbit::column_groups(3, lowbit::per_group{8}, "t"), lowbit::shape_error);
}

TEST_CASE("whole-row granularities give one group") {
    CHECK(same(lowbit::column_groups(7, lowbit::per_row{}, "t"), {{0, 7, 7}}));
    CHECK(same(lowbit::column_groups(7, lowbit::per_tensor{}, "t"), {{0, 7, 7}}));
    CHECK(same(lowbit::column_groups(7, lowbit::per_token{}, "t"), {{0, 7, 7}}));
    CHECK(lowbit::group_count(7, lowbit::per_row{}) == 1);
    CHECK(lowbit::group_width(7, lowbit::per_tensor{}) == 7);
    CHECK(lowbit::granularity_traits<lowbit::per_tensor>::shared_across_rows);
    CHECK_FALSE(lowbit::granularity_traits<lowbit::per_row>::shared_across_rows);
    CHECK_FALSE(lowbit::granularity_traits<lowbit::per_group>::shared_across_rows);
}

TEST_CASE("group size 0 is refused") {
    CHECK_THROWS_AS((void)lowbit::column_groups(4, lowbit::per_group{0}, "t"), lowbit::invalid_argument);
    CHECK_THROWS_WITH((void)lowbit::column_groups(4, lowbit::per_group{-3, lowbit::tail_policy::zero_pad}, "t"),
                      doctest::Contains("group size must be >= 1"));
}

TEST_CASE("padded_block copies the group and pads with zeros") {
    lowbit::matrix_f w(2, 5);
    w << 1, 2, 3, 4, 5, 6, 7, 8, 9, 10;
    const auto b = lowbit::detail::padded_block(w, {3, 2, 4});
    REQUIRE(b.rows() == 2);
    REQUIRE(b.cols() == 4);
    CHECK(b(0, 0) == 4);
    CHECK(b(1, 1) == 10);
    CHECK(b(0, 2) == 0);
    CHECK(b(1, 3) == 0);
}
