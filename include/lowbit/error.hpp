#pragma once
/// \file error.hpp
/// The exception hierarchy thrown at lowbit's API boundaries.
///
/// Every error thrown by lowbit derives from `lowbit::error` (itself a `std::runtime_error`), and
/// its message names the argument and the rule it broke, e.g.
/// `lowbit: quantize_absmean: argument 'w' contains NaN or Inf`.

#include <lowbit/config.hpp>

#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>

LOWBIT_BEGIN_NAMESPACE

/// Base of every exception lowbit throws.
class error : public std::runtime_error {
public:
    explicit error(const std::string& what) : std::runtime_error(what) {}
};

/// A value outside its documented domain (group size 0, bits outside 2..8, unknown name, ...).
class invalid_argument : public error {
public:
    using error::error;
};

/// Shapes that do not agree (matrix sizes, buffer lengths, sizes not a multiple of a block).
class shape_error : public error {
public:
    using error::error;
};

/// Non-finite input (NaN/Inf) or a numerically impossible request (singular matrix without damping).
class numeric_error : public error {
public:
    using error::error;
};

/// A file or byte buffer that is truncated, corrupt or of the wrong format; also I/O failures.
class format_error : public error {
public:
    using error::error;
};

namespace detail {

/// Throws `E` with the message "lowbit: <where>: <what>" unless `ok`.
template <class E = invalid_argument>
inline void require(bool ok, const char* where, const std::string& what) {
    if (!ok) throw E(std::string("lowbit: ") + where + ": " + what);
}

/// As above for a literal message: nothing is allocated when `ok` (kernel entry points check on
/// every call).
template <class E = invalid_argument>
inline void require(bool ok, const char* where, const char* what) {
    if (!ok) throw E(std::string("lowbit: ") + where + ": " + what);
}

/// As above with the message built by `what()` only when the check fails (messages with numbers).
template <class E = invalid_argument, class Message>
    requires std::is_invocable_r_v<std::string, Message>
inline void require(bool ok, const char* where, Message&& what) {
    if (!ok) throw E(std::string("lowbit: ") + where + ": " + std::forward<Message>(what)());
}

} // namespace detail

LOWBIT_END_NAMESPACE
