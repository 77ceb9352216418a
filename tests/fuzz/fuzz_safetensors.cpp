// libFuzzer target: the strict safetensors reader on arbitrary bytes.
// Contract checked: malformed input throws lowbit::format_error and nothing else (no crash, leak or
// UB under ASan/UBSan); an accepted file re-written by safetensors_writer parses again to the same
// names, dtypes, shapes, bytes and metadata.
// Build and run: scripts/fuzz.
#include <lowbit/io/safetensors.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    using namespace lowbit::io;
    safetensors_file f;
    try {
        f = safetensors_file::parse(std::span(reinterpret_cast<const std::byte*>(data), size));
    } catch (const lowbit::format_error&) {
        return 0;
    }
    safetensors_writer w;
    try {
        for (const auto& name : f.names()) {
            const auto v = f.tensor(name);
            w.add(name, v.dtype, v.shape, v.bytes);
        }
        for (const auto& [k, v] : f.metadata()) w.set_metadata(k, v);
    } catch (const lowbit::invalid_argument&) {
        return 0; // names the writer refuses (empty name)
    }
    const auto g = safetensors_file::parse(w.serialize());
    auto sorted = [](std::vector<std::string> v) { std::sort(v.begin(), v.end()); return v; };
    if (sorted(g.names()) != sorted(f.names()) || g.metadata() != f.metadata()) std::abort();
    for (const auto& name : f.names()) {
        const auto a = f.tensor(name), b = g.tensor(name);
        if (a.dtype != b.dtype || a.shape != b.shape || !std::equal(a.bytes.begin(), a.bytes.end(), b.bytes.begin(), b.bytes.end()))
            std::abort();
    }
    return 0;
}
