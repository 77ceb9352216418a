// NLI error tables and plots for docs/nli.md.
//
// For every function of activations.hpp and M in {4, 8, 16, 32, 64}: fit the DP-optimal cutpoints
// (uniform grid of N = 257 candidates, evaluation set 1025 points, summed relative error) and the uniform
// cutpoints on the same grid, build the float tables, and measure max and mean relative error against the
// std:: function in double on 200001 uniformly spaced test points of the domain (relative error
// |f - g| / max(|f|, floor), floor per function). exp and rsqrt are measured through their range reduction
// (exp on [-80, 80], rsqrt on [1e-30, 1e30] log-spaced). Prints Markdown; writes nli_silu.svg and
// nli_exp.svg into the folder given as argument (default: current folder).
//
//   build-*/examples/example_04_nli_tables docs > /tmp/nli_tables.md
#include <lowbit/activations.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

namespace {

struct err {
    double max = 0, mean = 0;
};

// Relative error of `g` against `f` on the points `xs` (floor on |f|).
err measure(const std::function<double(double)>& f, const std::function<float(float)>& g, const std::vector<float>& xs,
            double floor) {
    err e;
    for (float x : xs) {
        const double want = f(x);
        const double r = std::abs(double(g(x)) - want) / std::max(std::abs(want), floor);
        e.max = std::max(e.max, r);
        e.mean += r;
    }
    e.mean /= static_cast<double>(xs.size());
    return e;
}

template <class Fn>
lowbit::pwl_table uniform_table(std::size_t m, std::size_t n) {
    const auto grid = lowbit::uniform_grid(Fn::lo, Fn::hi, n);
    std::vector<float> c, v;
    for (auto k : lowbit::uniform_cut_indices(n, m)) {
        c.push_back(static_cast<float>(grid[k]));
        v.push_back(static_cast<float>(Fn::value(grid[k])));
    }
    return lowbit::pwl_table(c, v, Fn::left, Fn::right, n - 1);
}

std::vector<float> linspace(double lo, double hi, int n) {
    std::vector<float> xs(n);
    for (int i = 0; i < n; ++i) xs[i] = static_cast<float>(lo + (hi - lo) * i / (n - 1));
    return xs;
}

std::string fmt(double v) {
    char b[32];
    std::snprintf(b, sizeof b, "%.2e", v);
    return b;
}

constexpr std::size_t grid_n = 257;
const std::size_t ms[] = {4, 8, 16, 32, 64};

template <class Fn>
void table_direct(const char* name) {
    const auto xs = linspace(Fn::lo, Fn::hi, 200001);
    const auto f = [](double x) { return Fn::value(x); };
    std::printf("\n### %s on [%g, %g] (relative-error floor %g)\n\n", name, Fn::lo, Fn::hi, Fn::relative_floor);
    std::printf("| M | DP max rel | DP mean rel | minimax DP max rel | uniform max rel | uniform mean rel |\n|---|---|---|---|---|---|\n");
    for (std::size_t m : ms) {
        const auto t = lowbit::make_nli_table<Fn>(lowbit::fit_nli<Fn>(m, grid_n));
        const auto u = uniform_table<Fn>(m, grid_n);
        const auto ed = measure(f, [&](float x) { return t(x); }, xs, Fn::relative_floor);
        const auto eu = measure(f, [&](float x) { return u(x); }, xs, Fn::relative_floor);
        const auto tx = lowbit::make_nli_table<Fn>(lowbit::fit_nli<Fn>(m, grid_n, lowbit::max_of_errors{}));
        const auto ex = measure(f, [&](float x) { return tx(x); }, xs, Fn::relative_floor);
        std::printf("| %zu | %s | %s | %s | %s | %s |\n", m, fmt(ed.max).c_str(), fmt(ed.mean).c_str(), fmt(ex.max).c_str(),
                    fmt(eu.max).c_str(), fmt(eu.mean).c_str());
    }
}

// Range-reduced function: the table of Fn is used through `apply(table, x)` and measured on `xs`.
template <class Fn, class Apply>
void table_reduced(const char* title, double (*ref)(double), Apply apply, const std::vector<float>& xs) {
    using namespace lowbit;
    std::printf("\n### %s\n\n", title);
    std::printf("| M | DP max rel | DP mean rel | minimax DP max rel | uniform max rel | uniform mean rel |\n|---|---|---|---|---|---|\n");
    for (std::size_t m : ms) {
        const auto t = make_nli_table<Fn>(fit_nli<Fn>(m, grid_n));
        const auto u = uniform_table<Fn>(m, grid_n);
        const auto tx = make_nli_table<Fn>(fit_nli<Fn>(m, grid_n, max_of_errors{}));
        const auto ed = measure(ref, [&](float x) { return apply(t, x); }, xs, 1e-30);
        const auto eu = measure(ref, [&](float x) { return apply(u, x); }, xs, 1e-30);
        const auto ex = measure(ref, [&](float x) { return apply(tx, x); }, xs, 1e-30);
        std::printf("| %zu | %s | %s | %s | %s | %s |\n", m, fmt(ed.max).c_str(), fmt(ed.mean).c_str(), fmt(ex.max).c_str(),
                    fmt(eu.max).c_str(), fmt(eu.mean).c_str());
    }
}

double exp_ref(double x) { return std::exp(x); }
double rsqrt_ref(double x) { return 1.0 / std::sqrt(x); }

void table_exp_rsqrt() {
    using namespace lowbit;
    std::vector<float> xr;
    for (int i = 0; i <= 200000; ++i) xr.push_back(static_cast<float>(std::pow(10.0, -30.0 + 60.0 * i / 200000)));
    table_reduced<exp2_fraction_function>("exp via 2^f on [0, 1], measured on x in [-80, 80]", exp_ref,
                                          [](const pwl_table& t, float x) { return exp_pwl(t, x); }, linspace(-80.0, 80.0, 200001));
    table_reduced<rsqrt_mantissa_function>("rsqrt via m^-1/2 on [1, 4], measured on x in [1e-30, 1e30] (log-spaced)", rsqrt_ref,
                                           [](const pwl_table& t, float x) { return rsqrt_pwl(t, x); }, xr);
    const auto& e = preset_table<exp2_fraction_function>();
    const auto xs = linspace(-87.0, 88.0, 200001);
    const auto es = measure([](double x) { return x / (1 + std::exp(-x)); }, [&](float x) { return silu_exp_pwl(e, x); },
                            xs, 1e-30);
    std::printf("\nSiLU built on the exp preset (M = 16), x / (1 + exp_pwl(-x)) on [-87, 88]: max rel %s, mean rel %s\n",
                fmt(es.max).c_str(), fmt(es.mean).c_str());
}

// Two-panel SVG: f and g (top, cutpoints marked), relative error of DP and uniform (bottom, log10 scale).
void plot(const std::string& path, const char* title, double lo, double hi, const std::function<double(double)>& f,
          const std::function<float(float)>& g, const std::function<float(float)>& gu, const std::vector<float>& cuts,
          double floor) {
    const int w = 720, h = 520, pl = 60, pr = 20, top1 = 40, h1 = 240, top2 = 320, h2 = 160;
    const int n = 600;
    std::vector<double> x(n), fy(n), gy(n), ed(n), eu(n);
    double ymin = 1e300, ymax = -1e300;
    for (int i = 0; i < n; ++i) {
        x[i] = lo + (hi - lo) * i / (n - 1);
        fy[i] = f(x[i]);
        gy[i] = g(static_cast<float>(x[i]));
        const double d = std::max(std::abs(fy[i]), floor);
        ed[i] = std::log10(std::max(std::abs(gy[i] - fy[i]) / d, 1e-8));
        eu[i] = std::log10(std::max(std::abs(double(gu(static_cast<float>(x[i]))) - fy[i]) / d, 1e-8));
        ymin = std::min(ymin, fy[i]);
        ymax = std::max(ymax, fy[i]);
    }
    const double emin = -8, emax = 0;
    const auto px = [&](double v) { return pl + (v - lo) / (hi - lo) * (w - pl - pr); };
    const auto py1 = [&](double v) { return top1 + h1 - (v - ymin) / (ymax - ymin) * h1; };
    const auto py2 = [&](double v) { return top2 + h2 - (v - emin) / (emax - emin) * h2; };
    std::ofstream o(path);
    o << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << w << "\" height=\"" << h
      << "\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
    o << "<text x=\"" << pl << "\" y=\"20\" font-size=\"14\">" << title << "</text>\n";
    const auto poly = [&](const std::vector<double>& ys, auto py, const char* color, const char* dash) {
        o << "<polyline fill=\"none\" stroke=\"" << color << "\" stroke-width=\"1.3\"" << dash << " points=\"";
        for (int i = 0; i < n; ++i) o << px(x[i]) << ',' << py(ys[i]) << ' ';
        o << "\"/>\n";
    };
    for (int panel = 0; panel < 2; ++panel) {
        const int t = panel ? top2 : top1, hh = panel ? h2 : h1;
        o << "<rect x=\"" << pl << "\" y=\"" << t << "\" width=\"" << (w - pl - pr) << "\" height=\"" << hh
          << "\" fill=\"none\" stroke=\"#888\"/>\n";
        o << "<text x=\"" << pl << "\" y=\"" << (t + hh + 15) << "\">" << lo << "</text><text x=\"" << (w - pr - 20)
          << "\" y=\"" << (t + hh + 15) << "\">" << hi << "</text>\n";
    }
    o << "<text x=\"5\" y=\"" << top1 + 10 << "\">" << fmt(ymax) << "</text><text x=\"5\" y=\"" << top1 + h1 << "\">"
      << fmt(ymin) << "</text>\n";
    o << "<text x=\"5\" y=\"" << top2 + 10 << "\">1e0</text><text x=\"5\" y=\"" << top2 + h2 << "\">1e-8</text>\n";
    for (float c : cuts)
        o << "<line x1=\"" << px(c) << "\" x2=\"" << px(c) << "\" y1=\"" << top1 << "\" y2=\"" << top1 + h1
          << "\" stroke=\"#ddd\"/>\n";
    poly(fy, py1, "black", "");
    poly(gy, py1, "#d62728", " stroke-dasharray=\"5,3\"");
    poly(eu, py2, "#999", "");
    poly(ed, py2, "#1f77b4", "");
    o << "<text x=\"" << pl + 10 << "\" y=\"" << top1 + 15 << "\">black: f; red dashed: NLI approximant; grey lines: cutpoints</text>\n";
    o << "<text x=\"" << pl + 10 << "\" y=\"" << top2 - 8
      << "\">log10 relative error: blue DP cutpoints, grey uniform cutpoints (same M)</text>\n</svg>\n";
}

} // namespace

int main(int argc, char** argv) {
    using namespace lowbit;
    const std::string dir = argc > 1 ? argv[1] : ".";
    std::printf("Generated by examples/04_nli_tables.cpp (N = %zu uniform candidates, 200001 test points).\n", grid_n);
    table_direct<silu_function>("SiLU");
    table_direct<gelu_tanh_function>("GELU (tanh form)");
    table_direct<gelu_erf_function>("GELU (erf form)");
    table_direct<sigmoid_function>("sigmoid");
    table_direct<tanh_function>("tanh");
    table_exp_rsqrt();

    {
        const auto t = make_nli_table<silu_function>(fit_nli<silu_function>(8, grid_n));
        const auto u = uniform_table<silu_function>(8, grid_n);
        plot(dir + "/nli_silu.svg", "SiLU, M = 8 DP-optimal segments on [-8, 8] (N = 257)", -10, 10,
             [](double x) { return silu_function::value(x); }, [&](float x) { return t(x); },
             [&](float x) { return u(x); }, std::vector<float>(t.cutpoints().begin(), t.cutpoints().end()),
             silu_function::relative_floor);
    }
    {
        const auto t = make_nli_table<exp2_fraction_function>(fit_nli<exp2_fraction_function>(4, grid_n));
        const auto u = uniform_table<exp2_fraction_function>(4, grid_n);
        std::vector<float> cuts;
        for (int k = -4; k <= 2; ++k)
            for (float c : t.cutpoints()) cuts.push_back(static_cast<float>((k + c) / 1.4426950408889634));
        plot(dir + "/nli_exp.svg", "exp(x) = 2^n 2^f with a M = 4 table of 2^f (DP-optimal), x in [-3, 1.5]", -3, 1.5,
             [](double x) { return std::exp(x); }, [&](float x) { return exp_pwl(t, x); },
             [&](float x) { return exp_pwl(u, x); }, cuts, 1e-30);
    }
    std::fprintf(stderr, "wrote %s/nli_silu.svg and %s/nli_exp.svg\n", dir.c_str(), dir.c_str());
    return 0;
}
