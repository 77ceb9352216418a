#pragma once
/// \file detail/dependent_false.hpp
/// `dependent_false<T>`: a `false` that depends on T, for refusing primary templates.

#include <lowbit/config.hpp>

LOWBIT_BEGIN_NAMESPACE
namespace detail {
/// Always false, but only once `T` is known (for `static_assert` in primary templates).
template <class...>
inline constexpr bool dependent_false = false;
} // namespace detail
LOWBIT_END_NAMESPACE
