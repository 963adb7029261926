// Exact multi-head softmax attention for small head dims on x86-64 CPUs (AVX2 + FMA).
//
// Plain C ABI (no torch headers): worldmodel/kernels/__init__.py compiles this file with g++ and
// calls it through ctypes with the data pointers of contiguous float32 tensors.
//
// Layout. The fused projection output qkv is [outer, S, inner, 3E] with the last axis laid out as
// (three heads d): q = [0, E), k = [E, 2E), v = [2E, 3E), head h at h*d. Attention runs over the
// S axis, independently for every (outer, inner, head). The spatial attention of an ST block is
// outer = B*T, inner = 1; the temporal one is outer = B, S = T, inner = P. The output y is
// [outer, S, inner, E] (heads concatenated, ready for the out projection) and lse, the row-wise
// log-sum-exp of the scaled scores, is [outer, inner, heads, S].
//
// Method. One work item is one (outer, inner, head); its keys and values are packed transposed
// ([d][S], zero-padded to a multiple of 8) so a query's scores against 8 keys are d FMAs. The
// softmax is exact (max, exp, sum over the whole row), not online; the backward pass recomputes
// the probabilities from the stored lse as in FlashAttention-2. Work items write disjoint outputs
// and each one runs sequentially, so results do not depend on the thread count or schedule.
#include <immintrin.h>
#include <omp.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>

namespace {

constexpr int kLanes = 8;

// expf for x <= 0 (scores minus the row max or the lse): Cephes-style range reduction with a
// degree-6 polynomial, about 1 ulp. Inputs below -87 give exp(-87) ~ 1.6e-38 (still a normal
// float), which is negligible next to the row sum >= 1.
inline __m256 exp_nonpositive(__m256 x) {
    const __m256 log2e = _mm256_set1_ps(1.44269504088896341f);
    const __m256 ln2_hi = _mm256_set1_ps(0.693359375f);
    const __m256 ln2_lo = _mm256_set1_ps(-2.12194440e-4f);
    x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, log2e), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, ln2_hi, x);
    r = _mm256_fnmadd_ps(n, ln2_lo, r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    __m256 r2 = _mm256_mul_ps(r, r);
    p = _mm256_fmadd_ps(p, r2, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

inline float hmax(__m256 v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

// Lanes [0, count) set, count in [0, 8].
inline __m256 lane_mask(int64_t count) {
    const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(count)), idx));
}

struct Geometry {
    int64_t outer, S, inner, heads, d, E;
    int64_t qkv_row, y_row;  // strides between consecutive sequence positions
    int64_t items() const { return outer * inner * heads; }
    // Offsets of item (o, i, h)'s first row in qkv (q part) and in y.
    void base(int64_t item, int64_t& qkv_off, int64_t& y_off, int64_t& lse_off) const {
        int64_t h = item % heads;
        int64_t oi = item / heads;
        int64_t i = oi % inner;
        int64_t o = oi / inner;
        qkv_off = (o * S * inner + i) * 3 * E + h * d;
        y_off = (o * S * inner + i) * E + h * d;
        lse_off = item * S;
    }
};

Geometry make_geometry(int64_t outer, int64_t S, int64_t inner, int64_t heads, int64_t d) {
    Geometry g{outer, S, inner, heads, d, heads * d, 0, 0};
    g.qkv_row = inner * 3 * g.E;
    g.y_row = inner * g.E;
    return g;
}

float* aligned_floats(int64_t count) {
    size_t bytes = (static_cast<size_t>(count) * sizeof(float) + 63) / 64 * 64;
    return static_cast<float*>(std::aligned_alloc(64, bytes > 0 ? bytes : 64));
}

// Transposed, zero-padded copies of one item's keys and values: kt[c * spad + j] = k[j][c].
template <int D>
void pack_kv(const float* qkv, const Geometry& g, int64_t qkv_off, int64_t spad, int dyn_d, float* kt, float* vt) {
    const int d = D > 0 ? D : dyn_d;
    std::memset(kt, 0, sizeof(float) * d * spad);
    std::memset(vt, 0, sizeof(float) * d * spad);
    const float* k = qkv + qkv_off + g.E;
    const float* v = qkv + qkv_off + 2 * g.E;
    for (int64_t j = 0; j < g.S; ++j) {
        const float* kr = k + j * g.qkv_row;
        const float* vr = v + j * g.qkv_row;
        for (int c = 0; c < d; ++c) {
            kt[c * spad + j] = kr[c];
            vt[c * spad + j] = vr[c];
        }
    }
}

constexpr int kMaxD = 64;

template <int D>
void forward_impl(const float* qkv, float* y, float* lse, const Geometry& g, int causal, float scale, int threads) {
    const int64_t spad = (g.S + kLanes - 1) / kLanes * kLanes;
    const int dyn_d = static_cast<int>(g.d);
#pragma omp parallel num_threads(threads)
    {
        const int d = D > 0 ? D : dyn_d;
        float* kt = aligned_floats(d * spad);
        float* vt = aligned_floats(d * spad);
        float* p = aligned_floats(spad);
#pragma omp for schedule(static)
        for (int64_t item = 0; item < g.items(); ++item) {
            int64_t qkv_off, y_off, lse_off;
            g.base(item, qkv_off, y_off, lse_off);
            pack_kv<D>(qkv, g, qkv_off, spad, dyn_d, kt, vt);
            for (int64_t s = 0; s < g.S; ++s) {
                const float* q = qkv + qkv_off + s * g.qkv_row;
                const int64_t n = causal ? s + 1 : g.S;  // keys [0, n) are visible
                const int64_t nv = (n + kLanes - 1) / kLanes;
                __m256 qs[D > 0 ? D : kMaxD];
                for (int c = 0; c < d; ++c) qs[c] = _mm256_set1_ps(q[c] * scale);
                __m256 vmax = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
                for (int64_t b = 0; b < nv; ++b) {
                    __m256 acc = _mm256_mul_ps(qs[0], _mm256_load_ps(kt + b * kLanes));
                    for (int c = 1; c < d; ++c) acc = _mm256_fmadd_ps(qs[c], _mm256_load_ps(kt + c * spad + b * kLanes), acc);
                    if ((b + 1) * kLanes > n) {
                        acc = _mm256_blendv_ps(_mm256_set1_ps(-std::numeric_limits<float>::infinity()), acc,
                                               lane_mask(n - b * kLanes));
                    }
                    _mm256_store_ps(p + b * kLanes, acc);
                    vmax = _mm256_max_ps(vmax, acc);
                }
                const float m = hmax(vmax);
                const __m256 mv = _mm256_set1_ps(m);
                __m256 vsum = _mm256_setzero_ps();
                __m256 out[D > 0 ? D : kMaxD];
                for (int c = 0; c < d; ++c) out[c] = _mm256_setzero_ps();
                for (int64_t b = 0; b < nv; ++b) {
                    __m256 e = exp_nonpositive(_mm256_sub_ps(_mm256_load_ps(p + b * kLanes), mv));
                    if ((b + 1) * kLanes > n) e = _mm256_and_ps(e, lane_mask(n - b * kLanes));
                    vsum = _mm256_add_ps(vsum, e);
                    for (int c = 0; c < d; ++c) out[c] = _mm256_fmadd_ps(e, _mm256_load_ps(vt + c * spad + b * kLanes), out[c]);
                }
                const float sum = hsum(vsum);
                const float inv = 1.0f / sum;
                float* yr = y + y_off + s * g.y_row;
                for (int c = 0; c < d; ++c) yr[c] = hsum(out[c]) * inv;
                lse[lse_off + s] = m + std::log(sum);
            }
        }
        std::free(kt);
        std::free(vt);
        std::free(p);
    }
}

template <int D>
void backward_impl(const float* qkv, const float* y, const float* dy, const float* lse, float* dqkv, const Geometry& g,
                   int causal, float scale, int threads) {
    const int64_t spad = (g.S + kLanes - 1) / kLanes * kLanes;
    const int dyn_d = static_cast<int>(g.d);
#pragma omp parallel num_threads(threads)
    {
        const int d = D > 0 ? D : dyn_d;
        float* kt = aligned_floats(d * spad);
        float* vt = aligned_floats(d * spad);
        float* dkt = aligned_floats(d * spad);
        float* dvt = aligned_floats(d * spad);
#pragma omp for schedule(static)
        for (int64_t item = 0; item < g.items(); ++item) {
            int64_t qkv_off, y_off, lse_off;
            g.base(item, qkv_off, y_off, lse_off);
            pack_kv<D>(qkv, g, qkv_off, spad, dyn_d, kt, vt);
            std::memset(dkt, 0, sizeof(float) * d * spad);
            std::memset(dvt, 0, sizeof(float) * d * spad);
            for (int64_t s = 0; s < g.S; ++s) {
                const float* q = qkv + qkv_off + s * g.qkv_row;
                const float* o = y + y_off + s * g.y_row;
                const float* dor = dy + y_off + s * g.y_row;
                const int64_t n = causal ? s + 1 : g.S;
                const int64_t nv = (n + kLanes - 1) / kLanes;
                float delta = 0.0f;  // D_s = dO_s . O_s
                for (int c = 0; c < d; ++c) delta += dor[c] * o[c];
                __m256 qs[D > 0 ? D : kMaxD], dos[D > 0 ? D : kMaxD], dq[D > 0 ? D : kMaxD];
                for (int c = 0; c < d; ++c) {
                    qs[c] = _mm256_set1_ps(q[c] * scale);
                    dos[c] = _mm256_set1_ps(dor[c]);
                    dq[c] = _mm256_setzero_ps();
                }
                const __m256 lv = _mm256_set1_ps(lse[lse_off + s]);
                const __m256 dv = _mm256_set1_ps(delta);
                for (int64_t b = 0; b < nv; ++b) {
                    const int64_t j = b * kLanes;
                    __m256 sc = _mm256_mul_ps(qs[0], _mm256_load_ps(kt + j));
                    __m256 dp = _mm256_mul_ps(dos[0], _mm256_load_ps(vt + j));
                    for (int c = 1; c < d; ++c) {
                        sc = _mm256_fmadd_ps(qs[c], _mm256_load_ps(kt + c * spad + j), sc);
                        dp = _mm256_fmadd_ps(dos[c], _mm256_load_ps(vt + c * spad + j), dp);
                    }
                    __m256 pr = exp_nonpositive(_mm256_sub_ps(sc, lv));
                    if (j + kLanes > n) pr = _mm256_and_ps(pr, lane_mask(n - j));
                    const __m256 ds = _mm256_mul_ps(pr, _mm256_sub_ps(dp, dv));
                    for (int c = 0; c < d; ++c) {
                        float* dvc = dvt + c * spad + j;
                        float* dkc = dkt + c * spad + j;
                        _mm256_store_ps(dvc, _mm256_fmadd_ps(pr, dos[c], _mm256_load_ps(dvc)));
                        _mm256_store_ps(dkc, _mm256_fmadd_ps(ds, qs[c], _mm256_load_ps(dkc)));
                        dq[c] = _mm256_fmadd_ps(ds, _mm256_load_ps(kt + c * spad + j), dq[c]);
                    }
                }
                float* dqr = dqkv + qkv_off + s * g.qkv_row;
                for (int c = 0; c < d; ++c) dqr[c] = hsum(dq[c]) * scale;
            }
            float* dk = dqkv + qkv_off + g.E;
            float* dvv = dqkv + qkv_off + 2 * g.E;
            for (int64_t j = 0; j < g.S; ++j) {
                for (int c = 0; c < d; ++c) {
                    dk[j * g.qkv_row + c] = dkt[c * spad + j];
                    dvv[j * g.qkv_row + c] = dvt[c * spad + j];
                }
            }
        }
        std::free(kt);
        std::free(vt);
        std::free(dkt);
        std::free(dvt);
    }
}

}  // namespace

extern "C" {

int wb_attention_abi_version() { return 1; }

// Returns 0 on success, nonzero for an unsupported head dim.
int wb_attention_forward(const float* qkv, float* y, float* lse, int64_t outer, int64_t S, int64_t inner, int64_t heads,
                         int64_t d, int causal, float scale, int threads) {
    if (d < 1 || d > kMaxD) return 1;
    const Geometry g = make_geometry(outer, S, inner, heads, d);
    if (d == 4) {
        forward_impl<4>(qkv, y, lse, g, causal, scale, threads);
    } else if (d == 8) {
        forward_impl<8>(qkv, y, lse, g, causal, scale, threads);
    } else {
        forward_impl<0>(qkv, y, lse, g, causal, scale, threads);
    }
    return 0;
}

int wb_attention_backward(const float* qkv, const float* y, const float* dy, const float* lse, float* dqkv, int64_t outer,
                          int64_t S, int64_t inner, int64_t heads, int64_t d, int causal, float scale, int threads) {
    if (d < 1 || d > kMaxD) return 1;
    const Geometry g = make_geometry(outer, S, inner, heads, d);
    if (d == 4) {
        backward_impl<4>(qkv, y, dy, lse, dqkv, g, causal, scale, threads);
    } else if (d == 8) {
        backward_impl<8>(qkv, y, dy, lse, dqkv, g, causal, scale, threads);
    } else {
        backward_impl<0>(qkv, y, dy, lse, dqkv, g, causal, scale, threads);
    }
    return 0;
}

}  // extern "C"
