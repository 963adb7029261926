// Fused element-wise kernels of the ST block: residual + norm, and the SwiGLU activation.
//
// Plain C ABI on contiguous float32 buffers, like attention.cpp. Each one replaces a chain of
// PyTorch ops (and their autograd graph) that would each make a full pass over the activations:
//
// * residual RMSNorm:  z = x + f, zhat = z / sqrt(mean(z^2) + eps), y = zhat * w
// * residual FiLM norm: z = x + f, zhat = (z - mean z) / sqrt(var z + eps), y = zhat * (1 + gamma) + beta,
//   with (gamma, beta) one row per group of `group` consecutive rows (the P patches of a frame)
// * SwiGLU activation: h = [value | gate] (2 * inner per row), u = silu(value) * gate
//
// Parameter gradients are reduced in a fixed order (fixed row blocks, blocks summed in index
// order), so results do not depend on the thread count or schedule.
#include <immintrin.h>

#include "simd_exp.h"

#include <cmath>
#include <cstdint>
#include <cstdlib>

namespace {

constexpr int64_t kRowBlock = 256;  // rows per partial sum of a parameter gradient

inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

// sum_e a_e b_e over a row (b = nullptr: sum_e a_e), with 8-lane partial sums when E % 8 == 0
// (the compiler may not reorder a float reduction itself).
inline float row_dot(const float* a, const float* b, int64_t E) {
    if (E % 8 == 0) {
        __m256 acc = _mm256_setzero_ps();
        for (int64_t e = 0; e < E; e += 8) {
            const __m256 va = _mm256_loadu_ps(a + e);
            acc = b ? _mm256_fmadd_ps(va, _mm256_loadu_ps(b + e), acc) : _mm256_add_ps(acc, va);
        }
        return hsum(acc);
    }
    float s = 0.0f;
    for (int64_t e = 0; e < E; ++e) s += b ? a[e] * b[e] : a[e];
    return s;
}


// sigmoid(v) = 1 / (1 + e^-v), from e = e^-|v| <= 1 so nothing overflows.
inline __m256 sigmoid(__m256 v) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256 e = exp_nonpositive(_mm256_or_ps(v, sign));  // e^-|v|
    const __m256 inv = _mm256_div_ps(_mm256_set1_ps(1.0f), _mm256_add_ps(_mm256_set1_ps(1.0f), e));
    const __m256 negative = _mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_LT_OQ);
    return _mm256_blendv_ps(inv, _mm256_mul_ps(e, inv), negative);  // v < 0: e / (1 + e)
}

// residual RMSNorm; EC: the width E as a compile-time constant (0: runtime), for E = 32

// x, f, y, zhat [N, E]; rstd [N].
template <int EC>
void add_rmsnorm_forward_impl(const float* x, const float* f, const float* w, float eps, float* y, float* zhat,
                            float* rstd, int64_t N, int64_t E_runtime, int threads) {
    const int64_t E = EC > 0 ? EC : E_runtime;
#pragma omp parallel for schedule(dynamic, 64) num_threads(threads)
    for (int64_t r = 0; r < N; ++r) {
        const float* xr = x + r * E;
        const float* fr = f + r * E;
        float* zr = zhat + r * E;
        for (int64_t e = 0; e < E; ++e) zr[e] = xr[e] + fr[e];
        const float inv = 1.0f / std::sqrt(row_dot(zr, zr, E) / static_cast<float>(E) + eps);
        float* yr = y + r * E;
        for (int64_t e = 0; e < E; ++e) {
            zr[e] *= inv;
            yr[e] = zr[e] * w[e];
        }
        rstd[r] = inv;
    }
}

// dz [N, E] (the gradient of both x and f); dw [E]; scratch [ceil(N / kRowBlock), E].
template <int EC>
void add_rmsnorm_backward_impl(const float* dy, const float* zhat, const float* rstd, const float* w, float* dz,
                             float* dw, float* scratch, int64_t N, int64_t E_runtime, int threads) {
    const int64_t E = EC > 0 ? EC : E_runtime;
    const int64_t blocks = (N + kRowBlock - 1) / kRowBlock;
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
    for (int64_t b = 0; b < blocks; ++b) {
        float* part = scratch + b * E;
        for (int64_t e = 0; e < E; ++e) part[e] = 0.0f;
        const int64_t end = (b + 1) * kRowBlock < N ? (b + 1) * kRowBlock : N;
        for (int64_t r = b * kRowBlock; r < end; ++r) {
            const float* dyr = dy + r * E;
            const float* zr = zhat + r * E;
            float* dzr = dz + r * E;
            alignas(32) float g[EC > 0 ? EC : 1];
            float* gr = EC > 0 ? g : dzr;  // dy w (dz as scratch when E is not a constant)
            for (int64_t e = 0; e < E; ++e) {
                gr[e] = dyr[e] * w[e];
                part[e] += dyr[e] * zr[e];
            }
            const float mean = row_dot(gr, zr, E) / static_cast<float>(E);  // mean_e (dy w)_e zhat_e
            const float inv = rstd[r];
            for (int64_t e = 0; e < E; ++e) dzr[e] = inv * (gr[e] - zr[e] * mean);
        }
    }
    for (int64_t e = 0; e < E; ++e) dw[e] = 0.0f;
    for (int64_t b = 0; b < blocks; ++b) {
        for (int64_t e = 0; e < E; ++e) dw[e] += scratch[b * E + e];
    }
}

// ----------------------------------------------------------------------------- residual FiLM norm

// x, f, y, zhat [N, E]; film [N / group, 2E] = (gamma | beta) per group of rows; rstd [N].
template <int EC>
void add_filmnorm_forward_impl(const float* x, const float* f, const float* film, float eps, float* y, float* zhat,
                             float* rstd, int64_t N, int64_t E_runtime, int64_t group, int threads) {
    const int64_t E = EC > 0 ? EC : E_runtime;
#pragma omp parallel for schedule(dynamic, 64) num_threads(threads)
    for (int64_t r = 0; r < N; ++r) {
        const float* xr = x + r * E;
        const float* fr = f + r * E;
        const float* gamma = film + (r / group) * 2 * E;
        const float* beta = gamma + E;
        float* zr = zhat + r * E;
        for (int64_t e = 0; e < E; ++e) zr[e] = xr[e] + fr[e];
        const float mean = row_dot(zr, nullptr, E) / static_cast<float>(E);
        for (int64_t e = 0; e < E; ++e) zr[e] -= mean;
        const float inv = 1.0f / std::sqrt(row_dot(zr, zr, E) / static_cast<float>(E) + eps);  // biased variance
        float* yr = y + r * E;
        for (int64_t e = 0; e < E; ++e) {
            zr[e] *= inv;
            yr[e] = zr[e] * (1.0f + gamma[e]) + beta[e];
        }
        rstd[r] = inv;
    }
}

// dz [N, E]; dfilm [N / group, 2E] = (dgamma | dbeta), each group reduced sequentially.
template <int EC>
void add_filmnorm_backward_impl(const float* dy, const float* zhat, const float* rstd, const float* film, float* dz,
                              float* dfilm, int64_t N, int64_t E_runtime, int64_t group, int threads) {
    const int64_t E = EC > 0 ? EC : E_runtime;
    const int64_t groups = N / group;
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
    for (int64_t gi = 0; gi < groups; ++gi) {
        const float* gamma = film + gi * 2 * E;
        float* dgamma = dfilm + gi * 2 * E;
        float* dbeta = dgamma + E;
        for (int64_t e = 0; e < 2 * E; ++e) dgamma[e] = 0.0f;
        for (int64_t r = gi * group; r < (gi + 1) * group; ++r) {
            const float* dyr = dy + r * E;
            const float* zr = zhat + r * E;
            float* dzr = dz + r * E;
            alignas(32) float g[EC > 0 ? EC : 1];
            float* gr = EC > 0 ? g : dzr;  // g = dy (1 + gamma) (dz as scratch when E is not a constant)
            for (int64_t e = 0; e < E; ++e) {
                gr[e] = dyr[e] * (1.0f + gamma[e]);
                dgamma[e] += dyr[e] * zr[e];
                dbeta[e] += dyr[e];
            }
            const float mg = row_dot(gr, nullptr, E) / static_cast<float>(E);
            const float mgz = row_dot(gr, zr, E) / static_cast<float>(E);
            const float inv = rstd[r];
            for (int64_t e = 0; e < E; ++e) dzr[e] = inv * (gr[e] - mg - zr[e] * mgz);
        }
    }
}

}  // namespace

extern "C" {

// ----------------------------------------------------------------------------- residual + norm (per row)

void wb_add_rmsnorm_forward(const float* x, const float* f, const float* w, float eps, float* y, float* zhat, float* rstd, int64_t N, int64_t E, int threads) {
    if (E == 32) {
        add_rmsnorm_forward_impl<32>(x, f, w, eps, y, zhat, rstd, N, E, threads);
    } else {
        add_rmsnorm_forward_impl<0>(x, f, w, eps, y, zhat, rstd, N, E, threads);
    }
}

void wb_add_rmsnorm_backward(const float* dy, const float* zhat, const float* rstd, const float* w, float* dz, float* dw, float* scratch, int64_t N, int64_t E, int threads) {
    if (E == 32) {
        add_rmsnorm_backward_impl<32>(dy, zhat, rstd, w, dz, dw, scratch, N, E, threads);
    } else {
        add_rmsnorm_backward_impl<0>(dy, zhat, rstd, w, dz, dw, scratch, N, E, threads);
    }
}

void wb_add_filmnorm_forward(const float* x, const float* f, const float* film, float eps, float* y, float* zhat, float* rstd, int64_t N, int64_t E, int64_t group, int threads) {
    if (E == 32) {
        add_filmnorm_forward_impl<32>(x, f, film, eps, y, zhat, rstd, N, E, group, threads);
    } else {
        add_filmnorm_forward_impl<0>(x, f, film, eps, y, zhat, rstd, N, E, group, threads);
    }
}

void wb_add_filmnorm_backward(const float* dy, const float* zhat, const float* rstd, const float* film, float* dz, float* dfilm, int64_t N, int64_t E, int64_t group, int threads) {
    if (E == 32) {
        add_filmnorm_backward_impl<32>(dy, zhat, rstd, film, dz, dfilm, N, E, group, threads);
    } else {
        add_filmnorm_backward_impl<0>(dy, zhat, rstd, film, dz, dfilm, N, E, group, threads);
    }
}

// ----------------------------------------------------------------------------- SwiGLU activation

// h [N, 2 * width] = (value | gate) -> u [N, width]; width a multiple of 8 (callers zero-pad:
// silu(0) * 0 = 0, so padding columns stay zero).
void wb_swiglu_forward(const float* h, float* u, int64_t N, int64_t width, int threads) {
#pragma omp parallel for schedule(dynamic, 64) num_threads(threads)
    for (int64_t r = 0; r < N; ++r) {
        const float* value = h + r * 2 * width;
        const float* gate = value + width;
        float* ur = u + r * width;
        for (int64_t e = 0; e < width; e += 8) {
            const __m256 v = _mm256_loadu_ps(value + e);
            _mm256_storeu_ps(ur + e, _mm256_mul_ps(_mm256_mul_ps(v, sigmoid(v)), _mm256_loadu_ps(gate + e)));
        }
    }
}

// du [N, width] -> dh [N, 2 * width] = (du * gate * silu'(value) | du * silu(value)),
// silu'(v) = s (1 + v (1 - s)) with s = sigmoid(v).
void wb_swiglu_backward(const float* h, const float* du, float* dh, int64_t N, int64_t width, int threads) {
    const __m256 one = _mm256_set1_ps(1.0f);
#pragma omp parallel for schedule(dynamic, 64) num_threads(threads)
    for (int64_t r = 0; r < N; ++r) {
        const float* value = h + r * 2 * width;
        const float* gate = value + width;
        const float* dur = du + r * width;
        float* dvalue = dh + r * 2 * width;
        float* dgate = dvalue + width;
        for (int64_t e = 0; e < width; e += 8) {
            const __m256 v = _mm256_loadu_ps(value + e);
            const __m256 d = _mm256_loadu_ps(dur + e);
            const __m256 s = sigmoid(v);
            const __m256 dsilu = _mm256_mul_ps(s, _mm256_fmadd_ps(v, _mm256_sub_ps(one, s), one));
            _mm256_storeu_ps(dvalue + e, _mm256_mul_ps(_mm256_mul_ps(d, _mm256_loadu_ps(gate + e)), dsilu));
            _mm256_storeu_ps(dgate + e, _mm256_mul_ps(d, _mm256_mul_ps(v, s)));
        }
    }
}

}  // extern "C"
