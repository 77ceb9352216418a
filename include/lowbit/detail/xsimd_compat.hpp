#pragma once
/// \file detail/xsimd_compat.hpp
/// Hides the API drift of xsimd between 8.1 (Debian), 9+ and 14+ (vcpkg), checked against 8.1, 13.0
/// and 14.1 (`scripts/test-xsimd`):
/// - horizontal sum: `hadd` (8.x) was renamed `reduce_add` (9.0). lowbit's wrapper is named
///   `detail::lane_sum`, not `reduce_add`: an unqualified `reduce_add(batch)` would also find
///   `xsimd::reduce_add` by argument-dependent lookup and be ambiguous on xsimd >= 9;
/// - `bitwise_cast` took the target *batch* type in 8.x (`bitwise_cast<batch<float, A>>(x)`) and takes
///   the target *element* type since (`bitwise_cast<float>(x)`): `detail::bitwise_cast<float>(x)`;
/// - the portable fallback arch tag: `generic` (< 14) was renamed `common` (14.0).
/// lowbit code calls `detail::lane_sum` / `detail::bitwise_cast` and names `detail::xsimd_common_arch`
/// only, always qualified with `detail::`.

#include <lowbit/config.hpp>

#include <xsimd/xsimd.hpp>

#include <concepts>
#include <cstddef>

#if !defined(XSIMD_VERSION_MAJOR)
#error "lowbit: xsimd version macros not found"
#endif

LOWBIT_BEGIN_NAMESPACE
namespace detail {

/// Horizontal sum of all lanes of `b` (xsimd `hadd` before 9.0, `reduce_add` since).
template <class T, class A>
inline T lane_sum(const xsimd::batch<T, A>& b) noexcept {
#if XSIMD_VERSION_MAJOR >= 9
    return xsimd::reduce_add(b);
#else
    return xsimd::hadd(b);
#endif
}

/// The bits of `x` reinterpreted as a batch of `To` with the same architecture (same lane count for
/// 32-bit types). xsimd 8.x takes the target batch type, later versions the target element type.
template <class To, class T, class A>
inline xsimd::batch<To, A> bitwise_cast(const xsimd::batch<T, A>& x) noexcept {
#if XSIMD_VERSION_MAJOR >= 9
    if constexpr (requires { { xsimd::bitwise_cast<To>(x) } -> std::same_as<xsimd::batch<To, A>>; })
        return xsimd::bitwise_cast<To>(x);
    else
#endif
        return xsimd::bitwise_cast<xsimd::batch<To, A>>(x);
}

#if XSIMD_VERSION_MAJOR >= 14
/// xsimd's portable fallback architecture tag (`common` since 14.0).
using xsimd_common_arch = xsimd::common;
#else
/// xsimd's portable fallback architecture tag (`generic` before 14.0).
using xsimd_common_arch = xsimd::generic;
#endif

/// Number of lanes of a float batch on the compile-time default architecture.
inline constexpr std::size_t float_lanes = xsimd::batch<float>::size;

} // namespace detail
LOWBIT_END_NAMESPACE
