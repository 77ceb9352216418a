#pragma once
/// \file version.hpp
/// lowbit's version. CMake parses the three macros below; `lowbit::version` mirrors them.

#define LOWBIT_VERSION_MAJOR 0
#define LOWBIT_VERSION_MINOR 1
#define LOWBIT_VERSION_PATCH 0

namespace lowbit {
/// Semantic version of the headers in use (major, minor, patch).
struct version_info {
    int major;
    int minor;
    int patch;
};
/// The version of these headers; equal to the `LOWBIT_VERSION_*` macros.
inline constexpr version_info version{LOWBIT_VERSION_MAJOR, LOWBIT_VERSION_MINOR, LOWBIT_VERSION_PATCH};
} // namespace lowbit
