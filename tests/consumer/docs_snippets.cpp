// Code blocks of the docs, compiled and run (CTest docs_snippets). Each block is copied verbatim
// between the markers; check_docs_snippets.py (tests/package) fails when a doc block and its copy
// here differ.
#include <lowbit/gemm.hpp>
#include <lowbit/gptq.hpp>
#include <lowbit/hadamard.hpp>
#include <lowbit/pack.hpp>
#include <lowbit/quantized_linear.hpp>
#include <lowbit/thread_pool.hpp>

#include <cstdio>
#include <stdexcept>

static void transforms_md_hadamard_options() {
    // BEGIN docs/transforms.md
lowbit::hadamard_transform rot(11008, {.randomized = true, .seed = 7,
                                       .policy = lowbit::hadamard_policy::bounded_cost});
lowbit::matrix_f x = lowbit::matrix_f::Random(4, 11008);
rot.apply_rows(x);                                   // x ↦ x·Q, in place
    // END docs/transforms.md
}

static void readme_gptq(const lowbit::matrix_f& w, const lowbit::matrix_f& x) {
    // BEGIN README.md
lowbit::gptq_hessian h(w.cols());
h.add(x);                                                        // H = 2/N Σ xᵀx
auto q = lowbit::gptq_quantize(w, h.matrix(), lowbit::e2m_atq_quantizer{});  // asymmetric ternary + GPTQ
    // END README.md
    // BEGIN docs/gptq.md
auto pw = lowbit::pack_gptq<lowbit::ternary2>(q);               // packed codes for the kernels
lowbit::vector_f y = lowbit::gemv(pw, x.row(0).transpose());    // y ≈ W x (int8 activations)
    // END docs/gptq.md
    (void)y;
}

static void quantized_linear_md(const lowbit::matrix_f& w, const lowbit::matrix_f& x_calib, const lowbit::matrix_f& x) {
    // BEGIN docs/quantized_linear.md
const lowbit::hadamard_transform rot(w.cols(), {.randomized = true, .seed = 1});
const lowbit::matrix_f wr = lowbit::rotate_weights(w, rot);              // W·Q, offline
lowbit::gptq_hessian h(w.cols());
h.add(lowbit::rotate_activations(x_calib, rot));                          // calibration in the rotated basis
auto res = lowbit::gptq_quantize(wr, h.matrix(), lowbit::e2m_atq_quantizer{});
lowbit::quantized_linear layer(lowbit::pack_gptq<lowbit::ternary2>(res), lowbit::act_int{8}, rot);
lowbit::matrix_f y;
layer.apply(x, y);                                                       // y ≈ x·Wᵀ
    // END docs/quantized_linear.md
    if (y.rows() != x.rows() || y.cols() != w.rows()) throw std::runtime_error("quantized_linear.md: shape");
}

static void kernels_md_thread_pool() {
    const auto W = lowbit::pack<lowbit::ternary2>(lowbit::matrix_i8::Ones(48, 300), lowbit::vector_f::Constant(48, 0.5f));
    const lowbit::matrix_f X = lowbit::matrix_f::Random(3, 300);
    // BEGIN docs/kernels.md
  lowbit::thread_pool pool(2);                                   // one worker thread, owned here
  lowbit::matrix_f y = lowbit::gemm_parallel(W, X, lowbit::act_int{8}, pool);
    // END docs/kernels.md
    if (y != lowbit::gemm(W, X, lowbit::act_int{8})) throw std::runtime_error("docs/kernels.md thread_pool snippet");
}

int main() {
    kernels_md_thread_pool();
    transforms_md_hadamard_options();
    readme_gptq(lowbit::matrix_f::Random(8, 256), lowbit::matrix_f::Random(64, 256));
    quantized_linear_md(lowbit::matrix_f::Random(16, 512), lowbit::matrix_f::Random(128, 512),
                        lowbit::matrix_f::Random(3, 512));
    std::puts("docs snippets ran");
    return 0;
}
