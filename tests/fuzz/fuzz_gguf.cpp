// libFuzzer target: the GGUF reader (io/gguf.hpp) and the block dequantizers (io/gguf_quants.hpp)
// on arbitrary bytes. Contract checked: malformed input throws lowbit::format_error and nothing else
// (no crash, leak or UB under ASan/UBSan: overflowing counts, sizes and offsets, unknown types,
// misaligned data, duplicates, truncation); every tensor of an accepted file dequantizes (or, for a
// type without a dequantizer, throws invalid_argument) without reading outside its bytes; the file
// re-written by gguf_writer parses again to the same metadata, tensor names, types, shapes and bytes.
// Build and run: scripts/fuzz.
#include <lowbit/io/gguf.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>

namespace {
bool same(const lowbit::io::gguf_value& a, const lowbit::io::gguf_value& b) {
    if (a.type != b.type || a.v.index() != b.v.index()) return false;
    if (a.type == lowbit::io::gguf_type::array) {
        const auto& x = a.as_array();
        const auto& y = b.as_array();
        if (a.element != b.element || x.size() != y.size()) return false;
        for (std::size_t i = 0; i < x.size(); ++i)
            if (!same(x[i], y[i])) return false;
        return true;
    }
    if (const auto* d = std::get_if<double>(&a.v)) {
        const double e = std::get<double>(b.v);
        return (std::isnan(*d) && std::isnan(e)) || *d == e;
    }
    if (const auto* u = std::get_if<std::uint64_t>(&a.v)) return *u == std::get<std::uint64_t>(b.v);
    if (const auto* i = std::get_if<std::int64_t>(&a.v)) return *i == std::get<std::int64_t>(b.v);
    if (const auto* x = std::get_if<bool>(&a.v)) return *x == std::get<bool>(b.v);
    return std::get<std::string>(a.v) == std::get<std::string>(b.v);
}
} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    using namespace lowbit::io;
    gguf_file f;
    try {
        f = gguf_file::parse(std::span(reinterpret_cast<const std::byte*>(data), size));
    } catch (const lowbit::format_error&) {
        return 0;
    }
    for (const auto& t : f.tensors()) {
        if (t.elements() > (1u << 20)) continue;
        try {
            (void)t.to_float();
        } catch (const lowbit::invalid_argument&) {
            // a known type without a dequantizer
        }
    }
    gguf_writer w;
    for (const auto& [k, v] : f.metadata()) w.set(k, v);
    for (const auto& t : f.tensors()) w.add_tensor(t.name, t.type, t.shape, {t.bytes.begin(), t.bytes.end()});
    const auto bytes = w.serialize();
    const auto g = gguf_file::parse(bytes);
    if (g.metadata().size() != f.metadata().size() || g.tensors().size() != f.tensors().size()) std::abort();
    for (std::size_t i = 0; i < f.metadata().size(); ++i)
        if (g.metadata()[i].first != f.metadata()[i].first || !same(g.metadata()[i].second, f.metadata()[i].second)) std::abort();
    for (std::size_t i = 0; i < f.tensors().size(); ++i) {
        const auto &a = f.tensors()[i], &b = g.tensors()[i];
        if (a.name != b.name || a.type != b.type || a.shape != b.shape ||
            !std::equal(a.bytes.begin(), a.bytes.end(), b.bytes.begin(), b.bytes.end()))
            std::abort();
    }
    return 0;
}
