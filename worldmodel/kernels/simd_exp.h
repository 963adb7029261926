// Vectorised exp for AVX2, shared by attention.cpp and fused.cpp.
#pragma once

#include <immintrin.h>

// 2^x for x <= 0: x = n + r with n = round(x) and r in [-1/2, 1/2], 2^r from a degree-6 polynomial
// fitted for minimal relative error (1e-7, i.e. float rounding) and evaluated in Estrin form (a
// short dependency chain), 2^n added into the exponent field. The rounding uses the shifter trick:
// in t = x + 1.5 * 2^23 the low mantissa bits hold n, so t - 1.5 * 2^23 = n and t << 23 puts n in
// the exponent bits. Inputs below -125 are clamped so results stay normal floats (>= 2^-125.5):
// such terms are negligible next to a softmax row sum >= 1.
inline __m256 exp2_nonpositive(__m256 x) {
    const __m256 shifter = _mm256_set1_ps(12582912.0f);  // 0x1.8p23
    x = _mm256_max_ps(x, _mm256_set1_ps(-125.0f));
    const __m256 t = _mm256_add_ps(x, shifter);
    const __m256 r = _mm256_sub_ps(x, _mm256_sub_ps(t, shifter));
    const __m256 r2 = _mm256_mul_ps(r, r);
    const __m256 a = _mm256_fmadd_ps(_mm256_set1_ps(6.9314718246459961e-1f), r, _mm256_set1_ps(1.0f));
    const __m256 b = _mm256_fmadd_ps(_mm256_set1_ps(5.5503323674201965e-2f), r, _mm256_set1_ps(2.4022647738456726e-1f));
    __m256 c = _mm256_fmadd_ps(_mm256_set1_ps(1.3398875016719103e-3f), r, _mm256_set1_ps(9.6184369176626205e-3f));
    c = _mm256_fmadd_ps(_mm256_set1_ps(1.5353361959569156e-4f), r2, c);
    const __m256 r4 = _mm256_mul_ps(r2, r2);
    const __m256 p = _mm256_fmadd_ps(c, r4, _mm256_fmadd_ps(b, r2, a));  // 2^r in [0.70, 1.42]
    return _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p), _mm256_slli_epi32(_mm256_castps_si256(t), 23)));
}

// e^x for x <= 0, as 2^(x log2 e).
inline __m256 exp_nonpositive(__m256 x) {
    return exp2_nonpositive(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)));
}
