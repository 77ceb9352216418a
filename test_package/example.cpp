// Consumer of an installed lowbit (Conan test_package, the moved-prefix CTest, the add_subdirectory
// consumer): ternary quantization, a packed GEMV against the dequantized weights, an online Hadamard
// rotation, and a quantized_linear layer with that rotation (kernels + transforms + layer).
#include <lowbit/gemm.hpp>
#include <lowbit/hadamard.hpp>
#include <lowbit/pack.hpp>
#include <lowbit/quantized_linear.hpp>
#include <lowbit/ternary.hpp>

#include <cmath>
#include <cstdio>

int main() {
    lowbit::matrix_f w(2, 4);
    w << 0.9f, -1.1f, 0.05f, 1.0f, //
        -0.2f, 0.3f, -0.25f, 0.0f;
    const auto q = lowbit::quantize_ternary(w, lowbit::optimal_threshold{});
    bool ok = q.codes(0, 0) == 1 && q.codes(0, 1) == -1 && q.codes(0, 2) == 0 && q.scale(0) > 0.9f;

    // Packed ternary GEMV == dense product of the dequantized weights.
    const Eigen::Index out = 8, in = 512;
    lowbit::matrix_i8 codes(out, in);
    for (Eigen::Index i = 0; i < out; ++i)
        for (Eigen::Index j = 0; j < in; ++j) codes(i, j) = static_cast<std::int8_t>((i * 7 + j * 3) % 3 - 1);
    const lowbit::vector_f scale = lowbit::vector_f::Constant(out, 0.5f);
    const auto pw = lowbit::pack<lowbit::ternary2>(codes, scale);
    lowbit::vector_f x(in);
    for (Eigen::Index j = 0; j < in; ++j) x(j) = std::sin(0.1f * static_cast<float>(j));
    const lowbit::vector_f want = pw.dequantize() * x;
    const lowbit::vector_f y = lowbit::gemv(pw, x, lowbit::act_fp32{});     // fp32 activations
    const lowbit::vector_f y8 = lowbit::gemv(pw, x, lowbit::act_int{8});    // int8 per-token activations
    const float scale_y = 1.0f + want.cwiseAbs().maxCoeff();
    ok = ok && (y - want).cwiseAbs().maxCoeff() < 1e-4f * scale_y && (y8 - want).cwiseAbs().maxCoeff() < 2e-2f * scale_y;

    // Online Hadamard rotation: orthogonal, so the norm of a row is kept.
    const lowbit::hadamard_transform rot(in, {.randomized = true, .seed = 1});
    lowbit::matrix_f xr = x.transpose();
    rot.apply_rows(xr);
    ok = ok && std::abs(xr.norm() - x.norm()) < 1e-3f * x.norm();

    // A quantized_linear layer with the rotation: (x Q)(W Q)ᵀ = x Wᵀ when the weights are rotated too.
    const lowbit::matrix_f wq = lowbit::rotate_weights(pw.dequantize(), rot);
    const lowbit::quantized_linear<lowbit::dense_weights, lowbit::act_fp32, lowbit::hadamard_transform> layer(
        lowbit::dense_weights{wq}, {}, rot);
    lowbit::matrix_f yl;
    layer.apply(x.transpose(), yl);
    ok = ok && (yl.transpose() - want).cwiseAbs().maxCoeff() < 1e-3f;

    std::printf("lowbit %d.%d.%d consumer: %s\n", lowbit::version.major, lowbit::version.minor,
                lowbit::version.patch, ok ? "ok" : "FAILED");
    return ok ? 0 : 1;
}
