// Tests for lowbit/model/scale_tuning.hpp. Oracles: central finite differences of the double-precision
// calibration loss (`calibration_loss`) with one scale or offset of a quantized stories260K linear
// moved and the operator rebuilt; finite differences of an explicit linear functional for the group
// and transform bookkeeping; a saved-and-reloaded model for what the records store.
#include <lowbit/io/llama2c.hpp>
#include <lowbit/io/tokenizer.hpp>
#include <lowbit/model/recipes.hpp>
#include <lowbit/model/scale_tuning.hpp>

#include <doctest/doctest.h>

#include "models.hpp"
#include "test_files.hpp"

#include <Eigen/QR>

#include <cmath>
#include <cstring>
#include <limits>
#include <fstream>
#include <random>
#include <span>
#include <sstream>

namespace {
struct fixture {
    lowbit::llama_model fp32 = lowbit::model_from_llama2c(lowbit::io::read_llama2c(lowbit_test::stories260k("stories260K.bin")));
    lowbit::io::tokenizer tok = lowbit::io::read_tokenizer(lowbit_test::stories260k("tok512.bin"));
    std::vector<int> calib = [this] {
        std::ifstream f(lowbit_test::stories260k("tinystories_dev.txt"));
        std::stringstream ss;
        ss << f.rdbuf();
        return tok.encode(ss.str().substr(60000, 6000), false, false, lowbit::io::dummy_prefix::separate);
    }();
};
const fixture& fx() {
    static const fixture f;
    return f;
}
constexpr int window = 64;

struct quantized {
    lowbit::recipe r;
    lowbit::llama_model m;
    lowbit::linear_records records;
};
/// The calibration set-up of every stories260K test here: 4 windows of 64 tokens, progress lines
/// collected into `lines` when given.
lowbit::quantize_options tuning_options(std::vector<std::string>* lines = nullptr) {
    lowbit::quantize_options o;
    o.calib_window = window;
    o.calib_windows = 4;
    if (lines) o.progress = [lines](const std::string& s) { lines->push_back(s); };
    return o;
}
/// The two held-out windows of scale tuning (the last full windows of the calibration tokens).
std::span<const int> held_out() {
    const std::size_t full = fx().calib.size() / window;
    return {fx().calib.data() + (full - 2) * window, 2 * window};
}
quantized quantize(const std::string& name, const std::string& fields = "") {
    quantized q;
    q.r = lowbit::find_recipe(name);
    if (!fields.empty()) lowbit::set_recipe_fields(q.r, fields, ',');
    const lowbit::quantize_options o = tuning_options();
    q.m = lowbit::quantize_model(fx().fp32, q.r, fx().calib, o, &q.records);
    return q;
}
lowbit::block_rotation rotation_of(const quantized& q, const lowbit::linear_record& rec) {
    return lowbit::block_rotation::from(lowbit::recipe_rotation(q.r, rec.cols), rec.rotation);
}

// A 3x8 tunable linear with groups of 3, 3, 2 columns behind a random orthogonal Q (QR of a Gaussian
// matrix; the transform maps each row g to g·Q), a Gaussian G, and the explicit functional
// L = Σ G ∘ W_eff with W_eff = W_q·Qᵀ (y = W_q·(x·Q)ᵀ), W_q(i, j) = α_ig·c_ij + μ_ig: linear in α, μ
// and real codes c, so its finite differences are exact.
struct functional_case {
    static constexpr Eigen::Index rows = 3, cols = 8, groups = 3;
    lowbit::tunable_linear t;
    lowbit::matrix_d q, g;
    explicit functional_case(std::uint64_t seed) {
        std::mt19937_64 rng(seed);
        std::normal_distribution<double> nd;
        t.id = lowbit::linear_id{0, lowbit::linear_slot::wq};
        t.codes.resize(rows, cols);
        for (Eigen::Index i = 0; i < t.codes.size(); ++i) t.codes.data()[i] = static_cast<std::int8_t>(static_cast<int>(rng() % 15) - 8);
        t.group_cols = 3;
        lowbit::matrix_d a(cols, cols);
        for (Eigen::Index i = 0; i < a.size(); ++i) a.data()[i] = nd(rng);
        q = Eigen::HouseholderQR<lowbit::matrix_d>(a).householderQ();
        t.input_transform = [qq = q](Eigen::Ref<lowbit::matrix_f> x) { x = (x.cast<double>() * qq).cast<float>(); };
        g.resize(rows, cols);
        for (Eigen::Index i = 0; i < g.size(); ++i) g.data()[i] = nd(rng);
    }
    [[nodiscard]] double loss(const lowbit::vector_d& al, const lowbit::vector_d& mu, const lowbit::matrix_d& c) const {
        lowbit::matrix_d wq(rows, cols);
        for (Eigen::Index i = 0; i < rows; ++i)
            for (Eigen::Index j = 0; j < cols; ++j) wq(i, j) = al(i * groups + j / 3) * c(i, j) + mu(i * groups + j / 3);
        return (g.array() * (wq * q.transpose()).array()).sum();
    }
};
} // namespace

TEST_CASE("scale_gradients: groups, offsets and the input transform against finite differences of <G, W_q·Qᵀ>") {
    functional_case fc(7);
    auto& t = fc.t;
    const auto& g = fc.g;
    const Eigen::Index rows = fc.rows, cols = fc.cols;
    REQUIRE(t.groups() == 3);
    t.scale = lowbit::vector_f::Constant(rows * 3, 0.5f);
    t.offset = lowbit::vector_f::Zero(rows * 3);
    const lowbit::matrix_d codes = t.codes.cast<double>();
    const auto [da, dm] = lowbit::scale_gradients(t, g);
    REQUIRE(da.size() == rows * 3);
    REQUIRE(dm.size() == rows * 3);
    const lowbit::vector_d a0 = lowbit::vector_d::Constant(rows * 3, 0.5), m0 = lowbit::vector_d::Zero(rows * 3);
    for (Eigen::Index k = 0; k < rows * 3; ++k) {
        lowbit::vector_d ap = a0, mp = m0;
        ap(k) += 1.0;
        mp(k) += 1.0;
        CHECK(da(k) == doctest::Approx(fc.loss(ap, m0, codes) - fc.loss(a0, m0, codes)).epsilon(1e-5));
        CHECK(dm(k) == doctest::Approx(fc.loss(a0, mp, codes) - fc.loss(a0, m0, codes)).epsilon(1e-5));
    }
    t.offset.resize(0); // no offset: no μ gradient
    CHECK(lowbit::scale_gradients(t, g).second.size() == 0);
    CHECK_THROWS_AS((void)lowbit::scale_gradients(t, lowbit::matrix_d::Zero(rows, cols + 1)), lowbit::shape_error);
}

TEST_CASE("scale gradients of a quantized stories260K model equal central differences of the calibration loss") {
    // int4 behind the randomised Hadamard (the transform path; offsets tied μ = α), binary with free
    // offsets behind the Hadamard, base-3 ternary without offsets
    struct variant {
        const char* name;
        const char* fields;
        bool tied, offsets;
    };
    for (const variant v : {variant{"rtn-w4", "rotation=hadamard", true, false}, variant{"binary-w1", "rotation=hadamard", false, true},
                            variant{"absmean-w1.58", "", false, false}}) {
        CAPTURE(v.name);
        quantized q = quantize(v.name, v.fields);
        lowbit::gradient_options go;
        go.window = window;
        go.max_windows = 1;
        const auto grads = lowbit::calibration_gradients(q.m, fx().calib, go);
        for (const auto& id : {lowbit::linear_id{0, lowbit::linear_slot::wq}, lowbit::linear_id{2, lowbit::linear_slot::w2},
                               lowbit::linear_id{4, lowbit::linear_slot::w3}}) {
            CAPTURE(id.name());
            lowbit::linear_record& rec = q.records.at(id.name());
            const auto tr = lowbit::detail::tunable_of_record(id, rec, rotation_of(q, rec));
            REQUIRE(tr.has_value());
            REQUIRE((tr->tie.size() > 0) == v.tied);
            if (v.tied) CHECK((tr->tie.array() == 1.0f).all()); // lowbit's symmetric int4 grid α·(t + 1)
            const auto& t = tr->layer;
            REQUIRE((t.offset.size() > 0) == v.offsets);
            const auto [da, dm] = lowbit::scale_gradients(t, grads.weight(id));
            for (Eigen::Index i : {Eigen::Index{0}, Eigen::Index{5}}) {
                // loss(+step) − loss(−step) over 2·step, moving α_i (and μ_i = k_i·α_i with it when tied) or μ_i
                const auto fd = [&](bool offset, float step) {
                    const float a = rec.scale(i), m = rec.offset.size() ? rec.offset(i) : 0.0f;
                    const auto loss_at = [&](float s) {
                        if (offset) rec.offset(i) = m + s;
                        else {
                            rec.scale(i) = a + s;
                            if (v.tied) rec.offset(i) = tr->tie(i) * (a + s);
                        }
                        q.m.set_linear(id, lowbit::build_linear(q.r, rec, lowbit::recipe_rotation(q.r, rec.cols)));
                        return lowbit::calibration_loss(q.m, fx().calib, window);
                    };
                    const double up = loss_at(step), down = loss_at(-step);
                    rec.scale(i) = a;
                    if (rec.offset.size()) rec.offset(i) = m;
                    q.m.set_linear(id, lowbit::build_linear(q.r, rec, lowbit::recipe_rotation(q.r, rec.cols)));
                    return (up - down) / (2.0 * static_cast<double>(step));
                };
                const float h = 2e-3f * std::abs(rec.scale(i));
                CHECK(da(i) == doctest::Approx(fd(false, h)).epsilon(2e-2).scale(1e-4 * da.cwiseAbs().maxCoeff()));
                if (v.offsets) CHECK(dm(i) == doctest::Approx(fd(true, h)).epsilon(2e-2).scale(1e-4 * dm.cwiseAbs().maxCoeff()));
            }
        }
    }
}

TEST_CASE("tied offsets stay whole multiples of the scale through tuning (the GGUF-exportable int4 grid)") {
    const lowbit::quantize_options o = tuning_options();
    lowbit::recipe r = lowbit::find_recipe("rtn-w4");
    lowbit::set_recipe_fields(r, "tune_steps=4,tune_lr=0.01,tune_windows=2", ',');
    lowbit::linear_records recs, plain;
    (void)lowbit::quantize_model(fx().fp32, r, fx().calib, o, &recs);
    (void)lowbit::quantize_model(fx().fp32, lowbit::find_recipe("rtn-w4"), {}, {}, &plain);
    bool moved = false;
    for (const auto& [name, rec] : recs) {
        CAPTURE(name);
        REQUIRE(rec.offset.size() == rec.scale.size());
        CHECK((rec.offset.array() == rec.scale.array()).all()); // μ = 1·α, exactly
        moved = moved || rec.scale != plain.at(name).scale;
    }
    CHECK(moved);
}

TEST_CASE("tune_steps lowers the held-out loss, stores fp16 scales and reloads to the same model") {
    std::vector<std::string> lines;
    const lowbit::quantize_options o = tuning_options(&lines);
    lowbit::recipe r = lowbit::find_recipe("absmean-w1.58");
    lowbit::set_recipe_fields(r, "tune_steps=6,tune_lr=0.01,tune_windows=2", ',');
    lowbit::quantized_model q{r, {}, {}, "", {}};
    q.model = lowbit::quantize_model(fx().fp32, r, fx().calib, o, &q.records);
    lowbit::linear_records untuned;
    const lowbit::llama_model plain = lowbit::quantize_model(fx().fp32, lowbit::find_recipe("absmean-w1.58"), {}, {}, &untuned);
    // the two held-out windows (the last full windows of the calibration tokens), scored by the float
    // forward pass (`perplexity`, an implementation independent of the double backward pass)
    REQUIRE(fx().calib.size() / window > 8);
    const std::span<const int> held = held_out();
    const double before = lowbit::perplexity(plain, held, window).perplexity;
    const double after = lowbit::perplexity(q.model, held, window).perplexity;
    MESSAGE("held-out perplexity untuned ", before, ", tuned ", after);
    CHECK(after < 0.8 * before);
    REQUIRE(!lines.empty());
    CHECK(lines.back().find(": kept") != std::string::npos);
    bool moved = false;
    for (const auto& [name, rec] : q.records)
        for (Eigen::Index i = 0; i < rec.scale.size(); ++i) {
            REQUIRE(static_cast<float>(Eigen::half(rec.scale(i))) == rec.scale(i));
            moved = moved || rec.scale(i) != untuned.at(name).scale(i);
        }
    CHECK(moved);
    // the file stores the tuned values: the reloaded model scores the same, bit for bit
    lowbit_test::temp_dir dir("lowbit_test_scale_tuning");
    const auto path = dir.path / "tuned.safetensors";
    lowbit::save_quantized_model(path, q);
    const auto back = lowbit::load_quantized_model(path);
    CHECK(back.spec.tune_steps == 6);
    CHECK(lowbit::perplexity(back.model, held, window).perplexity == after);
    // deterministic
    const lowbit::llama_model again = lowbit::quantize_model(fx().fp32, r, fx().calib, o);
    CHECK(lowbit::perplexity(again, held, window).perplexity == after);
    // a step far too large makes the held-out loss worse: the untuned values are restored
    lowbit::set_recipe_fields(r, "tune_steps=2,tune_lr=3", ',');
    lines.clear();
    lowbit::linear_records wild;
    const lowbit::llama_model w = lowbit::quantize_model(fx().fp32, r, fx().calib, o, &wild);
    CHECK(lines.back().find("not kept") != std::string::npos);
    for (const auto& [name, rec] : wild) CHECK(rec.scale == untuned.at(name).scale);
    CHECK(lowbit::perplexity(w, held, window).perplexity == before);
}

TEST_CASE("scale tuning refuses bad options and bad layers") {
    lowbit::recipe r = lowbit::find_recipe("rtn-w4");
    for (const char* f : {"tune_steps=-1", "tune_lr=0", "tune_lr=-0.1", "tune_windows=0"}) {
        CAPTURE(f);
        lowbit::recipe b = r;
        lowbit::set_recipe_fields(b, f, ',');
        CHECK_THROWS_WITH_AS((void)lowbit::quantize_model(fx().fp32, b, fx().calib), doctest::Contains("recipe tune_"),
                             lowbit::invalid_argument);
    }
    CHECK_THROWS_AS(lowbit::set_recipe_fields(r, "tune_lr=nan", ','), lowbit::invalid_argument);
    lowbit::recipe n = r;
    n.tune_steps = 1;
    n.tune_lr = std::numeric_limits<double>::quiet_NaN();
    CHECK_THROWS_AS((void)lowbit::quantize_model(fx().fp32, n, fx().calib), lowbit::invalid_argument);
    lowbit::recipe t = r;
    t.tune_steps = 1;
    CHECK_THROWS_AS((void)lowbit::quantize_model(fx().fp32, t, {}), lowbit::shape_error); // calibration needed
    // one window of calibration tokens: nothing left to train on once one is held out
    const std::vector<int> one(fx().calib.begin(), fx().calib.begin() + window);
    lowbit::quantize_options o1;
    o1.calib_window = window;
    t.tune_windows = 1;
    CHECK_THROWS_WITH_AS((void)lowbit::quantize_model(fx().fp32, t, one, o1), doctest::Contains("holdout_windows"),
                         lowbit::shape_error);
    quantized q = quantize("rtn-w4");
    const lowbit::linear_id id{1, lowbit::linear_slot::wk};
    auto tr = lowbit::detail::tunable_of_record(id, q.records.at(id.name()), rotation_of(q, q.records.at(id.name())));
    REQUIRE(tr.has_value());
    auto layer = std::optional<lowbit::tunable_linear>(tr->layer);
    layer->offset = q.records.at(id.name()).offset; // tuned freely here (untie), so the offset checks below apply
    layer->codes.array() -= 1;                      // back to the stored codes t (the tie added k = 1)
    const lowbit::tunable_rebuild rebuild = [&](const lowbit::tunable_linear& x) {
        lowbit::linear_record rec = q.records.at(x.id.name());
        rec.scale = x.scale;
        rec.offset = x.offset;
        return lowbit::build_linear(q.r, rec, std::nullopt);
    };
    lowbit::scale_tuning_options so;
    so.window = window;
    so.steps = 1;
    so.windows = so.holdout_windows = 2;
    std::vector<lowbit::tunable_linear> bad{*layer};
    bad[0].scale(3) = 0.0f;
    CHECK_THROWS_WITH_AS((void)lowbit::tune_quantization_scales(q.m, bad, rebuild, fx().calib, so), doctest::Contains("zero scale"),
                         lowbit::invalid_argument);
    bad = {*layer};
    bad[0].offset(0) = std::numeric_limits<float>::quiet_NaN();
    CHECK_THROWS_AS((void)lowbit::tune_quantization_scales(q.m, bad, rebuild, fx().calib, so), lowbit::invalid_argument);
    bad = {*layer};
    bad[0].scale.conservativeResize(bad[0].scale.size() - 1);
    CHECK_THROWS_AS((void)lowbit::tune_quantization_scales(q.m, bad, rebuild, fx().calib, so), lowbit::invalid_argument);
    bad = {*layer};
    bad[0].id = lowbit::linear_id{1, lowbit::linear_slot::w1}; // wk's codes against w1's shape
    REQUIRE(q.m.linear(bad[0].id).out_features() != bad[0].codes.rows());
    CHECK_THROWS_AS((void)lowbit::tune_quantization_scales(q.m, bad, rebuild, fx().calib, so), lowbit::shape_error);
    so.lr = -1;
    std::vector<lowbit::tunable_linear> ok{*layer};
    CHECK_THROWS_AS((void)lowbit::tune_quantization_scales(q.m, ok, rebuild, fx().calib, so), lowbit::invalid_argument);
    // zero steps: nothing changes
    so.lr = 1e-3;
    so.steps = 0;
    const auto res = lowbit::tune_quantization_scales(q.m, ok, rebuild, fx().calib, so);
    CHECK(res.loss.empty());
    CHECK_FALSE(res.kept);
    CHECK(ok[0].scale == layer->scale);
}

TEST_CASE("nearest_code: the nearest allowed code against a search over the code set") {
    struct set {
        int lo, hi;
        bool zero;
        float shift;
    };
    for (const set cs : {set{-1, 1, true, 0}, set{-1, 1, false, 0}, set{-8, 7, true, 1}, set{-8, 7, true, -2}, set{-2, 1, true, 0}}) {
        CAPTURE(cs.lo);
        CAPTURE(cs.zero);
        CAPTURE(cs.shift);
        lowbit::tunable_linear t;
        t.code_min = cs.lo;
        t.code_max = cs.hi;
        t.zero_code = cs.zero;
        t.code_shift = lowbit::vector_f::Constant(2, cs.shift);
        REQUIRE(t.codes_tunable());
        for (float u = -12.0f; u <= 12.0f; u += 0.0625f) {
            // search: smallest |u − c|; ties go to the code farther from the shift (away from zero), then up
            int best = 0;
            bool found = false;
            for (int c = cs.lo; c <= cs.hi; ++c) {
                if (!cs.zero && c == 0) continue;
                const float v = static_cast<float>(c) + cs.shift;
                if (!found) {
                    best = c;
                    found = true;
                    continue;
                }
                const float d = std::abs(u - v), db = std::abs(u - (static_cast<float>(best) + cs.shift));
                if (d < db || (d == db && (std::abs(c) > std::abs(best) || (std::abs(c) == std::abs(best) && c > best)))) best = c;
            }
            CAPTURE(u);
            CHECK(static_cast<int>(t.nearest_code(1, u)) == best + static_cast<int>(cs.shift));
        }
    }
    CHECK_FALSE(lowbit::tunable_linear{}.codes_tunable()); // default: codes fixed
}

TEST_CASE("code_gradients against finite differences of <G, W_q·Qᵀ> with real codes") {
    functional_case fc(11);
    auto& t = fc.t;
    const auto& g = fc.g;
    const Eigen::Index rows = fc.rows, cols = fc.cols;
    t.scale.resize(rows * 3);
    for (Eigen::Index k = 0; k < t.scale.size(); ++k) t.scale(k) = 0.25f + 0.1f * static_cast<float>(k);
    t.offset = lowbit::vector_f::Constant(rows * 3, 0.3f);
    const lowbit::vector_d al = t.scale.cast<double>(), mu = t.offset.cast<double>();
    const auto loss = [&](const lowbit::matrix_d& c) { return fc.loss(al, mu, c); };
    const lowbit::matrix_f dt = lowbit::code_gradients(t, g);
    REQUIRE(dt.rows() == rows);
    REQUIRE(dt.cols() == cols);
    const lowbit::matrix_d c0 = lowbit::matrix_d::Zero(rows, cols);
    for (Eigen::Index i = 0; i < rows; ++i)
        for (Eigen::Index j = 0; j < cols; ++j) {
            lowbit::matrix_d c = c0;
            c(i, j) = 1.0;
            CHECK(dt(i, j) == doctest::Approx(loss(c) - loss(c0)).epsilon(1e-5));
        }
    CHECK_THROWS_AS((void)lowbit::code_gradients(t, lowbit::matrix_d::Zero(rows + 1, cols)), lowbit::shape_error);
}

TEST_CASE("tune_code_lr moves codes within each format's code set, lowers the held-out loss and reloads") {
    std::vector<std::string> lines;
    const lowbit::quantize_options o = tuning_options(&lines);
    const std::span<const int> held = held_out();
    struct variant {
        std::string name;
        const char* fields;
        double code_lr;
    };
    for (const variant& v : {variant{"absmean-w1.58", "", 0.1}, variant{"binary-w1", "rotation=hadamard,", 0.1},
                            variant{"rtn-w4", "rotation=hadamard,", 0.03}}) {
        CAPTURE(v.name);
        lowbit::recipe scales_only = lowbit::find_recipe(v.name);
        lowbit::set_recipe_fields(scales_only, std::string(v.fields) + "tune_steps=6,tune_lr=0.01,tune_windows=2", ',');
        lowbit::recipe r = scales_only;
        r.tune_code_lr = v.code_lr;
        lowbit::linear_records untuned, recs;
        lowbit::recipe plain_r = lowbit::find_recipe(v.name);
        if (*v.fields) lowbit::set_recipe_fields(plain_r, std::string(v.fields).substr(0, std::strlen(v.fields) - 1), ',');
        const lowbit::llama_model plain = lowbit::quantize_model(fx().fp32, plain_r, fx().calib, o, &untuned);
        lines.clear();
        lowbit::quantized_model q{r, {}, {}, "", {}};
        q.model = lowbit::quantize_model(fx().fp32, r, fx().calib, o, &q.records);
        REQUIRE(!lines.empty());
        CHECK(lines.back().find(": kept") != std::string::npos);
        CHECK(lines.back().find(" 0 codes changed") == std::string::npos);
        const double before = lowbit::perplexity(plain, held, window).perplexity;
        const double after = lowbit::perplexity(q.model, held, window).perplexity;
        MESSAGE(v.name, ": held-out perplexity untuned ", before, ", codes and scales tuned ", after);
        CHECK(after < before);
        // the codes moved, and every stored code is in the format's set (decoding checks the digits;
        // binary digits are ±1 by construction, int4 stays tied μ = α)
        long long changed = 0;
        for (const auto& [name, rec] : q.records) {
            CAPTURE(name);
            const auto& u = untuned.at(name);
            REQUIRE(rec.codes.size() == u.codes.size());
            for (std::size_t b = 0; b < rec.codes.size(); ++b) changed += rec.codes[b] != u.codes[b];
            const auto tr = lowbit::detail::tunable_of_record(lowbit::linear_id{0, lowbit::linear_slot::wq}, rec, {});
            REQUIRE(tr.has_value());
            const auto& c = tr->layer.codes;
            CHECK(c.minCoeff() >= tr->layer.code_min + (tr->tie.size() ? tr->tie.minCoeff() : 0.0f));
            CHECK(c.maxCoeff() <= tr->layer.code_max + (tr->tie.size() ? tr->tie.maxCoeff() : 0.0f));
            if (v.name == "rtn-w4") CHECK((rec.offset.array() == rec.scale.array()).all());
            if (v.name == "binary-w1") CHECK((c.array() != 0).all());
        }
        CHECK(changed > 0);
        // saved and reloaded: the same model, bit for bit
        lowbit_test::temp_dir dir("lowbit_test_code_tuning");
        const auto path = dir.path / "tuned.safetensors";
        lowbit::save_quantized_model(path, q);
        const auto back = lowbit::load_quantized_model(path);
        CHECK(back.spec.tune_code_lr == v.code_lr);
        CHECK(lowbit::perplexity(back.model, held, window).perplexity == after);
        // deterministic
        CHECK(lowbit::perplexity(lowbit::quantize_model(fx().fp32, r, fx().calib, o), held, window).perplexity == after);
    }
    // a code step far too large: not kept, the input codes and scales come back exactly
    lowbit::recipe r = lowbit::find_recipe("absmean-w1.58");
    lowbit::set_recipe_fields(r, "tune_steps=2,tune_lr=3,tune_code_lr=100", ',');
    lowbit::linear_records untuned, wild;
    (void)lowbit::quantize_model(fx().fp32, lowbit::find_recipe("absmean-w1.58"), {}, {}, &untuned);
    lines.clear();
    (void)lowbit::quantize_model(fx().fp32, r, fx().calib, o, &wild);
    CHECK(lines.back().find("not kept") != std::string::npos);
    for (const auto& [name, rec] : wild) {
        CHECK(rec.codes == untuned.at(name).codes);
        CHECK(rec.scale == untuned.at(name).scale);
    }
}

TEST_CASE("code tuning refuses a bad code step and codes outside the code set") {
    lowbit::recipe r = lowbit::find_recipe("absmean-w1.58");
    r.tune_steps = 1;
    for (const double lr : {-0.1, std::numeric_limits<double>::quiet_NaN()}) {
        r.tune_code_lr = lr;
        CHECK_THROWS_WITH_AS((void)lowbit::quantize_model(fx().fp32, r, fx().calib), doctest::Contains("tune_code_lr"),
                             lowbit::invalid_argument);
    }
    quantized q = quantize("absmean-w1.58");
    const lowbit::linear_id id{1, lowbit::linear_slot::wk};
    auto tr = lowbit::detail::tunable_of_record(id, q.records.at(id.name()), {});
    REQUIRE(tr.has_value());
    std::vector<lowbit::tunable_linear> bad{tr->layer};
    bad[0].codes(2, 3) = 2; // not a ternary code
    const lowbit::tunable_rebuild rebuild = [&](const lowbit::tunable_linear&) {
        return lowbit::build_linear(q.r, q.records.at(id.name()), std::nullopt);
    };
    lowbit::scale_tuning_options so;
    so.window = window;
    so.steps = 1;
    so.windows = so.holdout_windows = 2;
    so.code_lr = 0.1;
    CHECK_THROWS_WITH_AS((void)lowbit::tune_quantization_scales(q.m, bad, rebuild, fx().calib, so), doctest::Contains("outside its code set"),
                         lowbit::invalid_argument);
    so.code_lr = -1;
    CHECK_THROWS_WITH_AS((void)lowbit::tune_quantization_scales(q.m, bad, rebuild, fx().calib, so), doctest::Contains("code_lr"),
                         lowbit::invalid_argument);
}
