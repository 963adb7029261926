// Exact multi-head softmax attention for small head dims on x86-64 CPUs (AVX2 + FMA).
//
// Plain C ABI (no torch headers): worldmodel/kernels/__init__.py compiles this file with g++ and
// calls it through ctypes with the data pointers of contiguous float32 tensors.
//
// Layout. The fused projection output qkv is [outer, S, inner, 3E] with the last axis laid out as
// (three heads d): q = [0, E), k = [E, 2E), v = [2E, 3E), head h at h*d. Attention runs over the
// S axis, independently for every (outer, inner, head). The spatial attention of an ST block is
// outer = B*T, inner = 1; the temporal one is outer = B, S = T, inner = P. The output y is
// [outer, S, inner, E]: heads concatenated, ready for the out projection. dqkv has qkv's layout.
//
// Two paths, both exact softmax (max-subtracted, full row sum; no online rescaling), computed in
// base 2 (scores scaled by log2 e, exp2 by a polynomial accurate to float rounding):
//
// * rows (long sequences, the spatial attention over P patches): one work item is one
//   (outer, inner, head). The forward puts 8 queries in the lanes of a vector and broadcasts the
//   keys, so the softmax statistics are per lane and nothing is reduced across lanes; it stores
//   the row log-sum-exp. The backward recomputes the probabilities from it (as FlashAttention-2)
//   with the keys in the lanes: pass A per query (p, ds = p (dp - D), dq), pass B per block of 8
//   queries (dk += ds q, dv += p dO with the accumulators kept in registers).
// * heads-in-lanes (short sequences, S <= kSmallMax: the causal temporal attention over T
//   frames, and the spatial one over a 16x16 frame's 16 patches): one work item is one
//   (outer, inner); q/k/v are packed as [S][d][heads] so 8 heads are processed per vector
//   with no horizontal reductions. The forward stores the probabilities
//   (S * S * heads floats per item, small) and the backward reuses them. For head dims 4 and 8 the
//   accumulators stay in registers, and with d = 4 and whole vectors of heads the packing is a
//   transpose in registers: the same operations in the same order as the generic loops.
//
// Work items write disjoint outputs and each runs sequentially, so results are bit-identical for
// any thread count or schedule.
#include <immintrin.h>

#include "simd_exp.h"

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>

namespace {

constexpr int kLanes = 8;
constexpr int kMaxD = 64;
constexpr int64_t kSmallMax = 16;
constexpr float kLog2e = 1.44269504088896341f;
constexpr float kLn2 = 0.693147180559945309f;


inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
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

// ============================================================================= rows path

// Offsets of item (o, i, h)'s first row in qkv (its q part) and in y, and of its lse row.
inline void row_item_base(const Geometry& g, int64_t item, int64_t& qkv_off, int64_t& y_off, int64_t& lse_off) {
    const int64_t h = item % g.heads;
    const int64_t oi = item / g.heads;
    const int64_t i = oi % g.inner;
    const int64_t o = oi / g.inner;
    qkv_off = (o * g.S * g.inner + i) * 3 * g.E + h * g.d;
    y_off = (o * g.S * g.inner + i) * g.E + h * g.d;
    lse_off = item * g.S;
}

inline int64_t round8(int64_t n) { return (n + kLanes - 1) / kLanes * kLanes; }

// Leading dimension of packed [d][S] arrays: S padded to 8 lanes plus 16 floats, so that rows and
// arrays do not sit a multiple of 4 KiB apart (loads would falsely wait on stores: 4K aliasing).
inline int64_t packed_ld(int64_t S) { return round8(S) + 16; }

// dst[j * d + c] = src[j * stride + c]: one head's rows, contiguous.
inline void pack_rows(const float* src, int64_t stride, int64_t S, int d, float* dst) {
    for (int64_t j = 0; j < S; ++j) {
        for (int c = 0; c < d; ++c) dst[j * d + c] = src[j * stride + c];
    }
}

// dst[c * ld + j] = src[j * stride + c], zero for S <= j < ld: one head's rows, transposed.
inline void pack_cols(const float* src, int64_t stride, int64_t S, int d, int64_t ld, float* dst) {
    std::memset(dst, 0, sizeof(float) * d * ld);
    for (int64_t j = 0; j < S; ++j) {
        for (int c = 0; c < d; ++c) dst[c * ld + j] = src[j * stride + c];
    }
}

// Lanes l with l >= first set: query i0 + l may see key j = i0 + first (causal, diagonal block).
inline __m256 causal_lanes(int64_t first) {
    const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_castsi256_ps(_mm256_cmpgt_epi32(idx, _mm256_set1_epi32(static_cast<int>(first) - 1)));
}

// Forward with 8 queries in the lanes of a vector: a key's scores against them are d FMAs with the
// key's entries broadcast, the softmax statistics are per lane, and nothing is reduced across
// lanes. Two passes per block of queries: scores and row max, then exp, row sum and P V.
// lse2 [items, S] is log2 of the row sum of 2^(score log2e): the natural lse times log2e.
template <int D>
void rows_forward(const float* qkv, float* y, float* lse2, const Geometry& g, int causal, float scale, int threads) {
    const int d = D > 0 ? D : static_cast<int>(g.d);
    const int64_t S = g.S;
    const int64_t items = g.outer * g.inner * g.heads;
    const float qscale = scale * kLog2e;  // scores in base-2 units: 2^(s log2e) = e^s
    const int64_t rows = round8(S * d) + 16;
#pragma omp parallel num_threads(threads)
    {
        float* buffer = aligned_floats(2 * rows + kLanes * S + 64);
        float* kr = buffer;
        float* vr = kr + rows;
        float* sc = vr + rows;  // [S][8]: the scores of the current block of queries
        alignas(32) float qt[D > 0 ? D : kMaxD][kLanes];
        alignas(32) float ot[D > 0 ? D : kMaxD][kLanes];
        alignas(32) float mt[kLanes], st[kLanes];
#pragma omp for schedule(dynamic, 4)
        for (int64_t item = 0; item < items; ++item) {
            int64_t qkv_off, y_off, lse_off;
            row_item_base(g, item, qkv_off, y_off, lse_off);
            pack_rows(qkv + qkv_off + g.E, g.qkv_row, S, d, kr);
            pack_rows(qkv + qkv_off + 2 * g.E, g.qkv_row, S, d, vr);
            for (int64_t i0 = 0; i0 < S; i0 += kLanes) {
                const int64_t valid = S - i0 < kLanes ? S - i0 : kLanes;
                for (int c = 0; c < d; ++c) {
                    for (int64_t l = 0; l < kLanes; ++l) {
                        qt[c][l] = l < valid ? qkv[qkv_off + (i0 + l) * g.qkv_row + c] * qscale : 0.0f;
                    }
                }
                __m256 qv[D > 0 ? D : kMaxD];
                for (int c = 0; c < d; ++c) qv[c] = _mm256_load_ps(qt[c]);
                const int64_t n = causal ? (i0 + kLanes < S ? i0 + kLanes : S) : S;  // keys any lane sees
                __m256 m = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
                for (int64_t j = 0; j < n; ++j) {
                    const float* kj = kr + j * d;
                    __m256 s = _mm256_mul_ps(qv[0], _mm256_broadcast_ss(kj));
                    for (int c = 1; c < d; ++c) s = _mm256_fmadd_ps(qv[c], _mm256_broadcast_ss(kj + c), s);
                    if (causal && j > i0) {
                        s = _mm256_blendv_ps(_mm256_set1_ps(-std::numeric_limits<float>::infinity()), s,
                                             causal_lanes(j - i0));
                    }
                    _mm256_store_ps(sc + j * kLanes, s);
                    m = _mm256_max_ps(m, s);
                }
                __m256 sum = _mm256_setzero_ps();
                __m256 out[D > 0 ? D : kMaxD];
                for (int c = 0; c < d; ++c) out[c] = _mm256_setzero_ps();
                for (int64_t j = 0; j < n; ++j) {
                    __m256 e = exp2_nonpositive(_mm256_sub_ps(_mm256_load_ps(sc + j * kLanes), m));
                    if (causal && j > i0) e = _mm256_and_ps(e, causal_lanes(j - i0));
                    sum = _mm256_add_ps(sum, e);
                    const float* vj = vr + j * d;
                    for (int c = 0; c < d; ++c) out[c] = _mm256_fmadd_ps(e, _mm256_broadcast_ss(vj + c), out[c]);
                }
                const __m256 inv = _mm256_div_ps(_mm256_set1_ps(1.0f), sum);
                for (int c = 0; c < d; ++c) _mm256_store_ps(ot[c], _mm256_mul_ps(out[c], inv));
                _mm256_store_ps(mt, m);
                _mm256_store_ps(st, sum);
                for (int64_t l = 0; l < valid; ++l) {
                    float* yr = y + y_off + (i0 + l) * g.y_row;
                    for (int c = 0; c < d; ++c) yr[c] = ot[c][l];
                    lse2[lse_off + i0 + l] = mt[l] + std::log2(st[l]);
                }
            }
        }
        std::free(buffer);
    }
}

// Backward, FlashAttention-2 style (probabilities recomputed from lse2), in two passes per block of
// kQueryBlock queries. Pass A, keys in lanes, per query: scores, probabilities p, dp = dO . v,
// ds = p (dp - D) (written to small per-block buffers) and dq = scale sum_j ds_j k_j. Pass B, keys
// in lanes: dk_j += ds q and dv_j += p dO over the block's queries, with the accumulators held in
// registers across the block instead of read and written once per query.
constexpr int64_t kQueryBlock = 8;

template <int D>
void rows_backward(const float* qkv, const float* y, const float* dy, const float* lse2, float* dqkv, const Geometry& g,
                   int causal, float scale, int threads) {
    const int d = D > 0 ? D : static_cast<int>(g.d);
    const int64_t S = g.S;
    const int64_t ld = packed_ld(S);
    const int64_t items = g.outer * g.inner * g.heads;
    const float qscale = scale * kLog2e;
#pragma omp parallel num_threads(threads)
    {
        float* buffer = aligned_floats((4 * d + 2 * kQueryBlock) * ld + 64);
        float* kt = buffer;
        float* vt = kt + d * ld;
        float* dkt = vt + d * ld;
        float* dvt = dkt + d * ld;
        float* pb = dvt + d * ld;            // [kQueryBlock][ld] probabilities
        float* db = pb + kQueryBlock * ld;   // [kQueryBlock][ld] ds
        alignas(32) float qtab[kQueryBlock][D > 0 ? D : kMaxD];
        alignas(32) float dotab[kQueryBlock][D > 0 ? D : kMaxD];
#pragma omp for schedule(dynamic, 4)
        for (int64_t item = 0; item < items; ++item) {
            int64_t qkv_off, y_off, lse_off;
            row_item_base(g, item, qkv_off, y_off, lse_off);
            pack_cols(qkv + qkv_off + g.E, g.qkv_row, S, d, ld, kt);
            pack_cols(qkv + qkv_off + 2 * g.E, g.qkv_row, S, d, ld, vt);
            std::memset(dkt, 0, sizeof(float) * d * ld);
            std::memset(dvt, 0, sizeof(float) * d * ld);
            for (int64_t i0 = 0; i0 < S; i0 += kQueryBlock) {
                const int64_t nb = S - i0 < kQueryBlock ? S - i0 : kQueryBlock;
                const int64_t n_block = causal ? i0 + nb : S;  // keys the block's last query sees
                const int64_t nv_block = (n_block + kLanes - 1) / kLanes;
                for (int64_t ii = 0; ii < nb; ++ii) {
                    const int64_t s = i0 + ii;
                    const float* q = qkv + qkv_off + s * g.qkv_row;
                    const float* o = y + y_off + s * g.y_row;
                    const float* dor = dy + y_off + s * g.y_row;
                    const int64_t n = causal ? s + 1 : S;  // keys [0, n) are visible
                    const int64_t nv = (n + kLanes - 1) / kLanes;
                    float delta = 0.0f;  // D_s = dO_s . O_s
                    for (int c = 0; c < d; ++c) delta += dor[c] * o[c];
                    __m256 qs[D > 0 ? D : kMaxD], dos[D > 0 ? D : kMaxD], dq[D > 0 ? D : kMaxD];
                    for (int c = 0; c < d; ++c) {
                        qtab[ii][c] = q[c] * qscale;
                        dotab[ii][c] = dor[c];
                        qs[c] = _mm256_set1_ps(qtab[ii][c]);
                        dos[c] = _mm256_set1_ps(dor[c]);
                        dq[c] = _mm256_setzero_ps();
                    }
                    const __m256 lv = _mm256_set1_ps(lse2[lse_off + s]);
                    const __m256 dv = _mm256_set1_ps(delta);
                    float* prow = pb + ii * ld;
                    float* drow = db + ii * ld;
                    for (int64_t b = 0; b < nv; ++b) {
                        const int64_t j = b * kLanes;
                        __m256 sc = _mm256_mul_ps(qs[0], _mm256_load_ps(kt + j));
                        __m256 dp = _mm256_mul_ps(dos[0], _mm256_load_ps(vt + j));
                        for (int c = 1; c < d; ++c) {
                            sc = _mm256_fmadd_ps(qs[c], _mm256_load_ps(kt + c * ld + j), sc);
                            dp = _mm256_fmadd_ps(dos[c], _mm256_load_ps(vt + c * ld + j), dp);
                        }
                        __m256 pr = exp2_nonpositive(_mm256_sub_ps(sc, lv));  // the probabilities
                        if (j + kLanes > n) pr = _mm256_and_ps(pr, lane_mask(n - j));
                        const __m256 ds = _mm256_mul_ps(pr, _mm256_sub_ps(dp, dv));  // d loss / d score
                        _mm256_store_ps(prow + j, pr);
                        _mm256_store_ps(drow + j, ds);
                        for (int c = 0; c < d; ++c) dq[c] = _mm256_fmadd_ps(ds, _mm256_load_ps(kt + c * ld + j), dq[c]);
                    }
                    for (int64_t b = nv; b < nv_block; ++b) {
                        _mm256_store_ps(prow + b * kLanes, _mm256_setzero_ps());
                        _mm256_store_ps(drow + b * kLanes, _mm256_setzero_ps());
                    }
                    float* dqr = dqkv + qkv_off + s * g.qkv_row;
                    for (int c = 0; c < d; ++c) dqr[c] = hsum(dq[c]) * scale;
                }
                for (int64_t b = 0; b < nv_block; ++b) {
                    const int64_t j = b * kLanes;
                    __m256 dk[D > 0 ? D : kMaxD], dvv[D > 0 ? D : kMaxD];
                    for (int c = 0; c < d; ++c) {
                        dk[c] = _mm256_load_ps(dkt + c * ld + j);
                        dvv[c] = _mm256_load_ps(dvt + c * ld + j);
                    }
                    for (int64_t ii = 0; ii < nb; ++ii) {
                        const __m256 pr = _mm256_load_ps(pb + ii * ld + j);
                        const __m256 ds = _mm256_load_ps(db + ii * ld + j);
                        for (int c = 0; c < d; ++c) {
                            dvv[c] = _mm256_fmadd_ps(pr, _mm256_broadcast_ss(&dotab[ii][c]), dvv[c]);
                            dk[c] = _mm256_fmadd_ps(ds, _mm256_broadcast_ss(&qtab[ii][c]), dk[c]);
                        }
                    }
                    for (int c = 0; c < d; ++c) {
                        _mm256_store_ps(dkt + c * ld + j, dk[c]);
                        _mm256_store_ps(dvt + c * ld + j, dvv[c]);
                    }
                }
            }
            // dkt accumulated ds * q * scale * log2e: divide the log2e back out.
            float* dk = dqkv + qkv_off + g.E;
            float* dvo = dqkv + qkv_off + 2 * g.E;
            for (int64_t j = 0; j < S; ++j) {
                for (int c = 0; c < d; ++c) {
                    dk[j * g.qkv_row + c] = dkt[c * ld + j] * kLn2;
                    dvo[j * g.qkv_row + c] = dvt[c * ld + j];
                }
            }
        }
        std::free(buffer);
    }
}

// ============================================================================= heads-in-lanes path

// With d = 4 and whole vectors of heads (hp = heads), a row's 8 heads x 4 dims are four vectors, and packing is
// a 4 x 8 transpose in registers instead of 32 scalar moves; the products are the same, so the bits are.
inline bool transposable(const Geometry& g) { return g.d == 4 && g.heads % kLanes == 0; }

// Packs rows [S] x (heads d) at src (row stride `stride`) into dst [S][d][hp] (hp = heads padded to
// 8; padding lanes zero), multiplying by `mul`.
inline void pack_heads(const float* src, int64_t stride, const Geometry& g, int64_t hp, float mul, float* dst) {
    const int64_t d = g.d, H = g.heads;
    if (transposable(g)) {
        const __m256 m = _mm256_set1_ps(mul);
        for (int64_t t = 0; t < g.S; ++t) {
            for (int64_t h0 = 0; h0 < H; h0 += kLanes) {
                const float* r = src + t * stride + h0 * 4;  // heads h0..h0+7, 4 dims each
                const __m256 r0 = _mm256_loadu_ps(r), r1 = _mm256_loadu_ps(r + 8);
                const __m256 r2 = _mm256_loadu_ps(r + 16), r3 = _mm256_loadu_ps(r + 24);
                const __m256 u0 = _mm256_permute2f128_ps(r0, r2, 0x20);  // heads 0 | 4
                const __m256 u1 = _mm256_permute2f128_ps(r0, r2, 0x31);  // heads 1 | 5
                const __m256 u2 = _mm256_permute2f128_ps(r1, r3, 0x20);  // heads 2 | 6
                const __m256 u3 = _mm256_permute2f128_ps(r1, r3, 0x31);  // heads 3 | 7
                const __m256 t0 = _mm256_unpacklo_ps(u0, u1), t1 = _mm256_unpackhi_ps(u0, u1);
                const __m256 t2 = _mm256_unpacklo_ps(u2, u3), t3 = _mm256_unpackhi_ps(u2, u3);
                float* out = dst + t * 4 * hp + h0;
                _mm256_storeu_ps(out, _mm256_mul_ps(_mm256_shuffle_ps(t0, t2, 0x44), m));           // dim 0
                _mm256_storeu_ps(out + hp, _mm256_mul_ps(_mm256_shuffle_ps(t0, t2, 0xEE), m));      // dim 1
                _mm256_storeu_ps(out + 2 * hp, _mm256_mul_ps(_mm256_shuffle_ps(t1, t3, 0x44), m));  // dim 2
                _mm256_storeu_ps(out + 3 * hp, _mm256_mul_ps(_mm256_shuffle_ps(t1, t3, 0xEE), m));  // dim 3
            }
        }
        return;
    }
    for (int64_t t = 0; t < g.S; ++t) {
        const float* row = src + t * stride;
        float* out = dst + t * d * hp;
        for (int64_t c = 0; c < d; ++c) {
            for (int64_t h = 0; h < H; ++h) out[c * hp + h] = row[h * d + c] * mul;
            for (int64_t h = H; h < hp; ++h) out[c * hp + h] = 0.0f;
        }
    }
}

// The inverse of pack_heads (padding lanes dropped).
inline void unpack_heads(const float* src, const Geometry& g, int64_t hp, float mul, float* dst, int64_t stride) {
    const int64_t d = g.d, H = g.heads;
    if (transposable(g)) {
        const __m256 m = _mm256_set1_ps(mul);
        for (int64_t t = 0; t < g.S; ++t) {
            for (int64_t h0 = 0; h0 < H; h0 += kLanes) {
                const float* in = src + t * 4 * hp + h0;
                const __m256 a0 = _mm256_mul_ps(_mm256_loadu_ps(in), m);
                const __m256 a1 = _mm256_mul_ps(_mm256_loadu_ps(in + hp), m);
                const __m256 a2 = _mm256_mul_ps(_mm256_loadu_ps(in + 2 * hp), m);
                const __m256 a3 = _mm256_mul_ps(_mm256_loadu_ps(in + 3 * hp), m);
                const __m256 t0 = _mm256_unpacklo_ps(a0, a1), t1 = _mm256_unpackhi_ps(a0, a1);
                const __m256 t2 = _mm256_unpacklo_ps(a2, a3), t3 = _mm256_unpackhi_ps(a2, a3);
                const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44);  // heads 0 | 4
                const __m256 u1 = _mm256_shuffle_ps(t0, t2, 0xEE);  // heads 1 | 5
                const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44);  // heads 2 | 6
                const __m256 u3 = _mm256_shuffle_ps(t1, t3, 0xEE);  // heads 3 | 7
                float* row = dst + t * stride + h0 * 4;
                _mm256_storeu_ps(row, _mm256_permute2f128_ps(u0, u1, 0x20));       // heads 0, 1
                _mm256_storeu_ps(row + 8, _mm256_permute2f128_ps(u2, u3, 0x20));   // heads 2, 3
                _mm256_storeu_ps(row + 16, _mm256_permute2f128_ps(u0, u1, 0x31));  // heads 4, 5
                _mm256_storeu_ps(row + 24, _mm256_permute2f128_ps(u2, u3, 0x31));  // heads 6, 7
            }
        }
        return;
    }
    for (int64_t t = 0; t < g.S; ++t) {
        float* row = dst + t * stride;
        const float* in = src + t * d * hp;
        for (int64_t h = 0; h < H; ++h) {
            for (int64_t c = 0; c < d; ++c) row[h * d + c] = in[c * hp + h] * mul;
        }
    }
}

inline int64_t padded_heads(const Geometry& g) { return (g.heads + kLanes - 1) / kLanes * kLanes; }

// probs [outer, inner, S (query), S (key), hp]: the attention probabilities (zero where masked).
// With a compile-time head dim D the accumulators live in registers; D = 0 (any d) keeps them in the
// packed buffers. Either way every output is the same chain of FMAs in the same order, so the same bits.
template <int D>
void small_forward(const float* qkv, float* y, float* probs, const Geometry& g, int causal, float scale, int threads) {
    const int64_t hp = padded_heads(g), d = D > 0 ? D : g.d, S = g.S, chunks = hp / kLanes;
    const int64_t items = g.outer * g.inner;
    const int64_t block = S * d * hp;
#pragma omp parallel num_threads(threads)
    {
        float* qb = aligned_floats(block);
        float* kb = aligned_floats(block);
        float* vb = aligned_floats(block);
        float* ob = aligned_floats(block);
#pragma omp for schedule(dynamic, 32)
        for (int64_t item = 0; item < items; ++item) {
            const int64_t o = item / g.inner, i = item % g.inner;
            const float* base = qkv + (o * S * g.inner + i) * 3 * g.E;
            pack_heads(base, g.qkv_row, g, hp, scale * kLog2e, qb);
            pack_heads(base + g.E, g.qkv_row, g, hp, 1.0f, kb);
            pack_heads(base + 2 * g.E, g.qkv_row, g, hp, 1.0f, vb);
            float* pr = probs + item * S * S * hp;
            for (int64_t t = 0; t < S; ++t) {
                const int64_t n = causal ? t + 1 : S;
                for (int64_t ch = 0; ch < chunks; ++ch) {
                    const int64_t lane = ch * kLanes;
                    __m256 sc[kSmallMax];
                    __m256 m = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
                    for (int64_t u = 0; u < n; ++u) {
                        __m256 acc = _mm256_setzero_ps();
                        for (int64_t c = 0; c < d; ++c) {
                            acc = _mm256_fmadd_ps(_mm256_load_ps(qb + (t * d + c) * hp + lane),
                                                  _mm256_load_ps(kb + (u * d + c) * hp + lane), acc);
                        }
                        sc[u] = acc;
                        m = _mm256_max_ps(m, acc);
                    }
                    __m256 sum = _mm256_setzero_ps();
                    for (int64_t u = 0; u < n; ++u) {
                        sc[u] = exp2_nonpositive(_mm256_sub_ps(sc[u], m));
                        sum = _mm256_add_ps(sum, sc[u]);
                    }
                    const __m256 inv = _mm256_div_ps(_mm256_set1_ps(1.0f), sum);
                    if constexpr (D > 0) {
                        __m256 out[D];
                        for (int c = 0; c < D; ++c) out[c] = _mm256_setzero_ps();
                        for (int64_t u = 0; u < n; ++u) {
                            const __m256 p = _mm256_mul_ps(sc[u], inv);
                            _mm256_storeu_ps(pr + (t * S + u) * hp + lane, p);
                            for (int c = 0; c < D; ++c) {
                                out[c] = _mm256_fmadd_ps(p, _mm256_load_ps(vb + (u * D + c) * hp + lane), out[c]);
                            }
                        }
                        for (int c = 0; c < D; ++c) _mm256_store_ps(ob + (t * D + c) * hp + lane, out[c]);
                    } else {
                        for (int64_t c = 0; c < d; ++c) {
                            _mm256_store_ps(ob + (t * d + c) * hp + lane, _mm256_setzero_ps());
                        }
                        for (int64_t u = 0; u < n; ++u) {
                            const __m256 p = _mm256_mul_ps(sc[u], inv);
                            _mm256_storeu_ps(pr + (t * S + u) * hp + lane, p);
                            for (int64_t c = 0; c < d; ++c) {
                                float* oc = ob + (t * d + c) * hp + lane;
                                _mm256_store_ps(oc, _mm256_fmadd_ps(p, _mm256_load_ps(vb + (u * d + c) * hp + lane),
                                                                    _mm256_load_ps(oc)));
                            }
                        }
                    }
                    for (int64_t u = n; u < S; ++u) _mm256_storeu_ps(pr + (t * S + u) * hp + lane, _mm256_setzero_ps());
                }
            }
            unpack_heads(ob, g, hp, 1.0f, y + (o * S * g.inner + i) * g.E, g.y_row);
        }
        std::free(qb);
        std::free(kb);
        std::free(vb);
        std::free(ob);
    }
}

// With a compile-time D the backward runs in three passes per vector of heads, each output's
// accumulator in registers: ds for every (query, key) pair; dk and dv per key over the queries in
// ascending order; dq per query over the keys in ascending order. These are the orders in which
// the one-pass loop (D = 0) adds into its buffers, so the results are the same bits.
template <int D>
void small_backward(const float* qkv, const float* y, const float* dy, const float* probs, float* dqkv,
                    const Geometry& g, int causal, float scale, int threads) {
    const int64_t hp = padded_heads(g), d = D > 0 ? D : g.d, S = g.S, chunks = hp / kLanes;
    const int64_t items = g.outer * g.inner;
    const int64_t block = S * d * hp;
#pragma omp parallel num_threads(threads)
    {
        float* qb = aligned_floats(block);
        float* kb = aligned_floats(block);
        float* vb = aligned_floats(block);
        float* ob = aligned_floats(block);
        float* dob = aligned_floats(block);
        float* dqb = aligned_floats(block);
        float* dkb = aligned_floats(block);
        float* dvb = aligned_floats(block);
        float* delta = aligned_floats(S * hp);
        float* dsb = aligned_floats(S * S * kLanes);  // [query][key][8]: ds of one vector of heads
#pragma omp for schedule(dynamic, 32)
        for (int64_t item = 0; item < items; ++item) {
            const int64_t o = item / g.inner, i = item % g.inner;
            const float* base = qkv + (o * S * g.inner + i) * 3 * g.E;
            const int64_t yoff = (o * S * g.inner + i) * g.E;
            pack_heads(base, g.qkv_row, g, hp, scale, qb);
            pack_heads(base + g.E, g.qkv_row, g, hp, 1.0f, kb);
            pack_heads(base + 2 * g.E, g.qkv_row, g, hp, 1.0f, vb);
            pack_heads(y + yoff, g.y_row, g, hp, 1.0f, ob);
            pack_heads(dy + yoff, g.y_row, g, hp, 1.0f, dob);
            const float* pr = probs + item * S * S * hp;
            for (int64_t t = 0; t < S; ++t) {
                for (int64_t ch = 0; ch < chunks; ++ch) {
                    const int64_t lane = ch * kLanes;
                    __m256 acc = _mm256_setzero_ps();
                    for (int64_t c = 0; c < d; ++c) {
                        acc = _mm256_fmadd_ps(_mm256_load_ps(dob + (t * d + c) * hp + lane),
                                              _mm256_load_ps(ob + (t * d + c) * hp + lane), acc);
                    }
                    _mm256_store_ps(delta + t * hp + lane, acc);
                }
            }
            if constexpr (D > 0) {
                for (int64_t ch = 0; ch < chunks; ++ch) {
                    const int64_t lane = ch * kLanes;
                    for (int64_t t = 0; t < S; ++t) {  // ds = p (dp - delta), dp = dO_t . v_u
                        const int64_t n = causal ? t + 1 : S;
                        const __m256 dt = _mm256_load_ps(delta + t * hp + lane);
                        __m256 dot[D];
                        for (int c = 0; c < D; ++c) dot[c] = _mm256_load_ps(dob + (t * D + c) * hp + lane);
                        for (int64_t u = 0; u < n; ++u) {
                            __m256 dp = _mm256_setzero_ps();
                            for (int c = 0; c < D; ++c) {
                                dp = _mm256_fmadd_ps(dot[c], _mm256_load_ps(vb + (u * D + c) * hp + lane), dp);
                            }
                            const __m256 p = _mm256_loadu_ps(pr + (t * S + u) * hp + lane);
                            _mm256_store_ps(dsb + (t * S + u) * kLanes, _mm256_mul_ps(p, _mm256_sub_ps(dp, dt)));
                        }
                    }
                    for (int64_t u = 0; u < S; ++u) {  // dv_u = sum_t p dO_t, dk_u = sum_t ds q_t
                        __m256 dk[D], dv[D];
                        for (int c = 0; c < D; ++c) dk[c] = dv[c] = _mm256_setzero_ps();
                        for (int64_t t = causal ? u : 0; t < S; ++t) {
                            const __m256 p = _mm256_loadu_ps(pr + (t * S + u) * hp + lane);
                            const __m256 ds = _mm256_load_ps(dsb + (t * S + u) * kLanes);
                            for (int c = 0; c < D; ++c) {
                                dv[c] = _mm256_fmadd_ps(p, _mm256_load_ps(dob + (t * D + c) * hp + lane), dv[c]);
                                dk[c] = _mm256_fmadd_ps(ds, _mm256_load_ps(qb + (t * D + c) * hp + lane), dk[c]);
                            }
                        }
                        for (int c = 0; c < D; ++c) {
                            _mm256_store_ps(dvb + (u * D + c) * hp + lane, dv[c]);
                            _mm256_store_ps(dkb + (u * D + c) * hp + lane, dk[c]);
                        }
                    }
                    for (int64_t t = 0; t < S; ++t) {  // dq_t = sum_u ds k_u
                        const int64_t n = causal ? t + 1 : S;
                        __m256 dq[D];
                        for (int c = 0; c < D; ++c) dq[c] = _mm256_setzero_ps();
                        for (int64_t u = 0; u < n; ++u) {
                            const __m256 ds = _mm256_load_ps(dsb + (t * S + u) * kLanes);
                            for (int c = 0; c < D; ++c) {
                                dq[c] = _mm256_fmadd_ps(ds, _mm256_load_ps(kb + (u * D + c) * hp + lane), dq[c]);
                            }
                        }
                        for (int c = 0; c < D; ++c) _mm256_store_ps(dqb + (t * D + c) * hp + lane, dq[c]);
                    }
                }
            } else {
                std::memset(dqb, 0, sizeof(float) * block);
                std::memset(dkb, 0, sizeof(float) * block);
                std::memset(dvb, 0, sizeof(float) * block);
                for (int64_t t = 0; t < S; ++t) {
                    const int64_t n = causal ? t + 1 : S;
                    for (int64_t ch = 0; ch < chunks; ++ch) {
                        const int64_t lane = ch * kLanes;
                        const __m256 dt = _mm256_load_ps(delta + t * hp + lane);
                        for (int64_t u = 0; u < n; ++u) {
                            const __m256 p = _mm256_loadu_ps(pr + (t * S + u) * hp + lane);
                            __m256 dp = _mm256_setzero_ps();
                            for (int64_t c = 0; c < d; ++c) {
                                dp = _mm256_fmadd_ps(_mm256_load_ps(dob + (t * d + c) * hp + lane),
                                                     _mm256_load_ps(vb + (u * d + c) * hp + lane), dp);
                            }
                            const __m256 ds = _mm256_mul_ps(p, _mm256_sub_ps(dp, dt));
                            for (int64_t c = 0; c < d; ++c) {
                                const int64_t tc = (t * d + c) * hp + lane, uc = (u * d + c) * hp + lane;
                                const __m256 dv = _mm256_fmadd_ps(p, _mm256_load_ps(dob + tc), _mm256_load_ps(dvb + uc));
                                const __m256 dk = _mm256_fmadd_ps(ds, _mm256_load_ps(qb + tc), _mm256_load_ps(dkb + uc));
                                const __m256 dq = _mm256_fmadd_ps(ds, _mm256_load_ps(kb + uc), _mm256_load_ps(dqb + tc));
                                _mm256_store_ps(dvb + uc, dv);
                                _mm256_store_ps(dkb + uc, dk);
                                _mm256_store_ps(dqb + tc, dq);
                            }
                        }
                    }
                }
            }
            float* dbase = dqkv + (o * S * g.inner + i) * 3 * g.E;
            unpack_heads(dqb, g, hp, scale, dbase, g.qkv_row);
            unpack_heads(dkb, g, hp, 1.0f, dbase + g.E, g.qkv_row);
            unpack_heads(dvb, g, hp, 1.0f, dbase + 2 * g.E, g.qkv_row);
        }
        std::free(qb);
        std::free(kb);
        std::free(vb);
        std::free(ob);
        std::free(dob);
        std::free(dqb);
        std::free(dkb);
        std::free(dvb);
        std::free(delta);
        std::free(dsb);
    }
}

bool use_small(const Geometry& g) { return g.S <= kSmallMax; }

}  // namespace

extern "C" {

int wb_attention_abi_version() { return 3; }

// Floats of the statistics buffer the forward fills and the backward reads.
int64_t wb_attention_stats_size(int64_t outer, int64_t S, int64_t inner, int64_t heads, int64_t d) {
    const Geometry g = make_geometry(outer, S, inner, heads, d);
    if (use_small(g)) return outer * inner * S * S * padded_heads(g);
    return outer * inner * heads * S;
}

// Returns 0 on success, 1 for an unsupported head dim.
int wb_attention_forward(const float* qkv, float* y, float* stats, int64_t outer, int64_t S, int64_t inner,
                         int64_t heads, int64_t d, int causal, float scale, int threads) {
    if (d < 1 || d > kMaxD) return 1;
    const Geometry g = make_geometry(outer, S, inner, heads, d);
    if (use_small(g)) {
        if (d == 4) {
            small_forward<4>(qkv, y, stats, g, causal, scale, threads);
        } else if (d == 8) {
            small_forward<8>(qkv, y, stats, g, causal, scale, threads);
        } else {
            small_forward<0>(qkv, y, stats, g, causal, scale, threads);
        }
    } else if (d == 4) {
        rows_forward<4>(qkv, y, stats, g, causal, scale, threads);
    } else if (d == 8) {
        rows_forward<8>(qkv, y, stats, g, causal, scale, threads);
    } else {
        rows_forward<0>(qkv, y, stats, g, causal, scale, threads);
    }
    return 0;
}

int wb_attention_backward(const float* qkv, const float* y, const float* dy, const float* stats, float* dqkv,
                          int64_t outer, int64_t S, int64_t inner, int64_t heads, int64_t d, int causal, float scale,
                          int threads) {
    if (d < 1 || d > kMaxD) return 1;
    const Geometry g = make_geometry(outer, S, inner, heads, d);
    if (use_small(g)) {
        if (d == 4) {
            small_backward<4>(qkv, y, dy, stats, dqkv, g, causal, scale, threads);
        } else if (d == 8) {
            small_backward<8>(qkv, y, dy, stats, dqkv, g, causal, scale, threads);
        } else {
            small_backward<0>(qkv, y, dy, stats, dqkv, g, causal, scale, threads);
        }
    } else if (d == 4) {
        rows_backward<4>(qkv, y, dy, stats, dqkv, g, causal, scale, threads);
    } else if (d == 8) {
        rows_backward<8>(qkv, y, dy, stats, dqkv, g, causal, scale, threads);
    } else {
        rows_backward<0>(qkv, y, dy, stats, dqkv, g, causal, scale, threads);
    }
    return 0;
}

}  // extern "C"
