#pragma once
/// \file config.hpp
/// Compiler and standard checks and the namespace macros every lowbit header uses.
///
/// Public entities live in `lowbit` through the versioned inline namespace `lowbit::v0`
/// ({fmt} style), so two majors can coexist in one program without ODR clashes.

#include <lowbit/version.hpp>

#if __cplusplus < 202002L && !(defined(_MSVC_LANG) && _MSVC_LANG >= 202002L)
#error "lowbit requires C++20 (compile with -std=c++20 or later)"
#endif

/// Opens `namespace lowbit { inline namespace v0 {`.
#define LOWBIT_BEGIN_NAMESPACE namespace lowbit { inline namespace v0 {
/// Closes what LOWBIT_BEGIN_NAMESPACE opened.
#define LOWBIT_END_NAMESPACE } }

#if defined(__GNUC__) || defined(__clang__)
/// Restricts a function to one instruction set (per-function target attribute, GCC/Clang).
#define LOWBIT_TARGET(isa) __attribute__((target(isa)))
#define LOWBIT_X86_TARGETS 1
#else
#define LOWBIT_TARGET(isa)
#define LOWBIT_X86_TARGETS 0
#endif
