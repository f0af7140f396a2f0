// Branch-free elementary functions for float and double that the compiler can vectorise.
//
// The engine applies activations to every entry of every layer, so exp, expm1, log, log1p and
// erfc (through erfcx) must run inside auto-vectorised loops; the C library's versions are opaque
// calls that stop vectorisation. Each function here is a handful of selects and a polynomial:
//   exp/expm1: Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2, Taylor polynomial in r,
//              scaling by 2^n in two steps so that results down to the subnormal range round
//              correctly (Muller, "Elementary Functions", ch. 11).
//   log:       x = 2^e m with m in [sqrt(1/2), sqrt(2)), log m = 2 atanh(s), s = (m-1)/(m+1).
//   log1p:     Goldberg's correction log1p(y) = log(u) * y / (u - 1), u = 1 + y.
//   erfcx:     e^{a^2} erfc(a) as a polynomial in t = (a - K) / (a + K) over 1 + 2a; with
//              exp_neg_half_square, e^{-x^2/2} with x^2 split exactly, it gives Phi(x).
// Accuracy (checked against long double in tests/unit/test_vmath.cpp): a few ulp over the whole
// range. Infinities and NaN propagate like the C library's functions.
#pragma once

#include <array>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <utility>

namespace selfnorm::vmath {

template <class T>
struct FloatTraits;

template <>
struct FloatTraits<float> {
  using Int = std::int32_t;
  using UInt = std::uint32_t;
  static constexpr int mantissa_bits = 23;
  static constexpr int exponent_bias = 127;
  // Adding and subtracting 1.5 * 2^23 rounds to the nearest integer (|v| < 2^22).
  static constexpr float round_magic = 12582912.0f;
  static constexpr float ln2_hi = 0.693359375f;     // 355/512, exact in few bits
  static constexpr float ln2_lo = -2.12194440e-4f;  // ln2 - ln2_hi
  static constexpr float exp_min = -104.0f;         // exp(x) rounds to 0 below
  static constexpr float exp_max = 89.0f;           // exp(x) overflows above
};

template <>
struct FloatTraits<double> {
  using Int = std::int64_t;
  using UInt = std::uint64_t;
  static constexpr int mantissa_bits = 52;
  static constexpr int exponent_bias = 1023;
  static constexpr double round_magic = 6755399441055744.0;  // 1.5 * 2^52
  static constexpr double ln2_hi = 6.93147180369123816490e-01;  // fdlibm split of ln 2
  static constexpr double ln2_lo = 1.90821492927058770002e-10;
  static constexpr double exp_min = -746.0;
  static constexpr double exp_max = 710.0;
};

constexpr double kLog2e = 1.44269504088896340736;
constexpr double kLn2 = 0.693147180559945309417;

// min/max that return NaN when x is NaN (the argument order matters for vector min/max).
template <class T>
inline T clamp_keep_nan(T x, T lo, T hi) {
  x = (x < lo) ? lo : x;
  x = (x > hi) ? hi : x;
  return x;
}

// 2^n for n in the normal exponent range, built from its bits.
template <class T>
inline T pow2i(typename FloatTraits<T>::Int n) {
  using Tr = FloatTraits<T>;
  using U = typename Tr::UInt;
  return std::bit_cast<T>(static_cast<U>(n + Tr::exponent_bias) << Tr::mantissa_bits);
}

// Round-to-nearest integer value of v as T (|v| < 2^22 for float, 2^51 for double).
template <class T>
inline T round_nearest(T v) {
  return (v + FloatTraits<T>::round_magic) - FloatTraits<T>::round_magic;
}

// The integer value of an integral v (|v| < 2^22 for float, 2^51 for double), read from the bits
// of v + round_magic, where it sits in the low mantissa bits: the same value as static_cast, but
// in integer operations that vectorise (without AVX-512 there is no vector conversion from double
// to int64).
template <class T>
inline typename FloatTraits<T>::Int integer_of(T v) {
  using Tr = FloatTraits<T>;
  using I = typename Tr::Int;
  return std::bit_cast<I>(v + Tr::round_magic) - std::bit_cast<I>(Tr::round_magic);
}

// Reduces x to n and r with x = n ln2 + r, |r| <= ln2/2 (plus rounding).
template <class T>
inline void reduce_ln2(T x, T& n, T& r) {
  using Tr = FloatTraits<T>;
  n = round_nearest<T>(x * static_cast<T>(kLog2e));
  r = std::fma(n, -Tr::ln2_hi, x);
  r = std::fma(n, -Tr::ln2_lo, r);
}

// expm1(r) - r - r^2/2 ... as r * (r * P(r)) is the usual form; here the Taylor sum
// em1(r) = r + r^2/2! + ... , truncated where the next term is below half an ulp for |r| <= ln2/2.
template <class T>
inline T expm1_reduced(T r) {
  if constexpr (std::is_same_v<T, float>) {
    T p = 1.0f / 5040.0f;
    p = std::fma(p, r, 1.0f / 720.0f);
    p = std::fma(p, r, 1.0f / 120.0f);
    p = std::fma(p, r, 1.0f / 24.0f);
    p = std::fma(p, r, 1.0f / 6.0f);
    p = std::fma(p, r, 0.5f);
    return std::fma(p * r, r, r);
  } else {
    T p = 1.0 / 6227020800.0;  // 1/13!
    p = std::fma(p, r, 1.0 / 479001600.0);
    p = std::fma(p, r, 1.0 / 39916800.0);
    p = std::fma(p, r, 1.0 / 3628800.0);
    p = std::fma(p, r, 1.0 / 362880.0);
    p = std::fma(p, r, 1.0 / 40320.0);
    p = std::fma(p, r, 1.0 / 5040.0);
    p = std::fma(p, r, 1.0 / 720.0);
    p = std::fma(p, r, 1.0 / 120.0);
    p = std::fma(p, r, 1.0 / 24.0);
    p = std::fma(p, r, 1.0 / 6.0);
    p = std::fma(p, r, 0.5);
    return std::fma(p * r, r, r);
  }
}

// x clamped to the range where e^x is finite and not zero, and reduced: e^x = 2^n e^r with
// |r| <= ln2/2, and 2^n = s1 s2 (two factors, each a normal number; their product is 0 or inf at
// the ends of the range). A NaN x stays in r.
template <class T>
inline void reduce_exp(T x, T& r, T& s1, T& s2) {
  using Tr = FloatTraits<T>;
  using I = typename Tr::Int;
  x = clamp_keep_nan<T>(x, Tr::exp_min, Tr::exp_max);
  T nf;
  reduce_ln2(x, nf, r);
  nf = (nf != nf) ? T(0) : nf;  // keep the integer conversion defined
  const I n = integer_of(nf);
  const I n1 = n >> 1;
  s1 = pow2i<T>(n1);
  s2 = pow2i<T>(n - n1);
}

// e^x.
template <class T>
inline T exp(T x) {
  T r, s1, s2;
  reduce_exp(x, r, s1, s2);
  const T p = expm1_reduced(r) + T(1);
  // One factor at a time: p 2^n rounds once, where the product 2^n alone could underflow.
  return p * s1 * s2;
}

// e^x - 1, accurate for small |x|.
template <class T>
inline T expm1(T x) {
  T r, s1, s2;
  reduce_exp(x, r, s1, s2);
  const T scale = s1 * s2;  // 2^n, 0 or inf at the ends
  const T em1 = expm1_reduced(r);
  // 2^n (em1 + 1) - 1 = 2^n em1 + (2^n - 1); exact when n = 0.
  return std::fma(scale, em1, scale - T(1));
}

// e^x and e^x - 1 together, both accurate (e^x is not formed as expm1 + 1, which loses the
// relative accuracy of small e^x).
template <class T>
inline void exp_expm1(T x, T& e, T& em1_out) {
  T r, s1, s2;
  reduce_exp(x, r, s1, s2);
  const T scale = s1 * s2;  // 2^n, 0 or inf at the ends
  const T em1 = expm1_reduced(r);
  e = (em1 + T(1)) * scale;
  em1_out = std::fma(scale, em1, scale - T(1));
}

namespace detail {

// x < 2^53 as a double, exactly, in operations every vector ISA has: 2 (x >> 1) + (x & 1), each
// part placed in the mantissa of 2^52.
constexpr double from_uint53_parts(std::uint64_t x) {
  constexpr std::uint64_t two52 = 0x4330000000000000ULL;  // the bits of 2^52
  const double half = std::bit_cast<double>((x >> 1) | two52) - 0x1.0p52;
  const double low = std::bit_cast<double>((x & 1) | two52) - 0x1.0p52;
  return 2.0 * half + low;
}

}  // namespace detail

// x < 2^53 as a double, exactly, in a form that vectorises. AVX-512 (DQ) converts 64-bit integers
// in one instruction. Without it there is no vector conversion of 64-bit integers, and a plain
// static_cast keeps the loop around it scalar: detail::from_uint53_parts gives the same value.
constexpr double from_uint53(std::uint64_t x) {
#if defined(__AVX512DQ__)
  return static_cast<double>(x);
#else
  return detail::from_uint53_parts(x);
#endif
}

namespace detail {

// log(x) for x = 2^(E - exponent_offset) m read from xs's bits (E its exponent field), xs finite
// and normal: the part of log() after the subnormal scaling and before the special cases.
template <class T>
inline T log_normal_range(T xs, T exponent_offset) {
  using Tr = FloatTraits<T>;
  using U = typename Tr::UInt;
  constexpr U mantissa_mask = (U(1) << Tr::mantissa_bits) - 1;
  const U bits = std::bit_cast<U>(xs);
  const U m_bits = (bits & mantissa_mask) | std::bit_cast<U>(T(1));
  const bool big = std::bit_cast<T>(m_bits) > static_cast<T>(1.41421356237309504880);
  // m in [sqrt(1/2), sqrt(2)): halved where big, by one off the exponent field (exact, as m * 0.5
  // is). Written as a select of m * 0.5 and m, GCC 12 carried both alternatives through the
  // division below: two divisions per vector, and the divider bounds the normal generator.
  const T m = std::bit_cast<T>(m_bits - (static_cast<U>(big) << Tr::mantissa_bits));
  // The exponent field placed in the mantissa of 2^mantissa_bits and read back as T: an exact
  // conversion in operations that vectorise (without AVX-512 there is no vector conversion of
  // 64-bit integers, and static_cast<double>(int64) kept callers' loops scalar).
  const T two_m = pow2i<T>(Tr::mantissa_bits);
  const T field = std::bit_cast<T>((bits >> Tr::mantissa_bits) | std::bit_cast<U>(two_m)) - two_m;
  const T ef = field - exponent_offset + (big ? T(1) : T(0));
  const T s = (m - T(1)) / (m + T(1));
  const T s2 = s * s;
  T p;
  if constexpr (std::is_same_v<T, float>) {
    p = 1.0f / 9.0f;
    p = std::fma(p, s2, 1.0f / 7.0f);
    p = std::fma(p, s2, 1.0f / 5.0f);
    p = std::fma(p, s2, 1.0f / 3.0f);
  } else {
    p = 1.0 / 21.0;
    p = std::fma(p, s2, 1.0 / 19.0);
    p = std::fma(p, s2, 1.0 / 17.0);
    p = std::fma(p, s2, 1.0 / 15.0);
    p = std::fma(p, s2, 1.0 / 13.0);
    p = std::fma(p, s2, 1.0 / 11.0);
    p = std::fma(p, s2, 1.0 / 9.0);
    p = std::fma(p, s2, 1.0 / 7.0);
    p = std::fma(p, s2, 1.0 / 5.0);
    p = std::fma(p, s2, 1.0 / 3.0);
  }
  const T two_s = s + s;
  const T log_m = std::fma(two_s * s2, p, two_s);
  return std::fma(ef, Tr::ln2_hi, std::fma(ef, Tr::ln2_lo, log_m));
}

}  // namespace detail

// Natural logarithm; log(0) = -inf, log(x < 0) = NaN.
template <class T>
inline T log(T x) {
  using Tr = FloatTraits<T>;
  using I = typename Tr::Int;
  constexpr T tiny = std::numeric_limits<T>::min();
  constexpr T subnormal_scale = std::is_same_v<T, float> ? 16777216.0f : 18014398509481984.0;  // 2^24, 2^54
  constexpr I subnormal_shift = std::is_same_v<T, float> ? 24 : 54;

  const bool sub = x < tiny;
  const T xs = sub ? x * subnormal_scale : x;
  T result = detail::log_normal_range(xs, T(Tr::exponent_bias + (sub ? subnormal_shift : 0)));
  constexpr T inf = std::numeric_limits<T>::infinity();
  result = (x == inf) ? inf : result;
  result = (x == T(0)) ? -inf : result;
  result = (x < T(0)) ? std::numeric_limits<T>::quiet_NaN() : result;
  result = (x != x) ? x : result;
  return result;
}

// log(x) for finite x >= numeric_limits<T>::min() (no zero, subnormal, infinity or NaN): the
// same value as log(x), to the bit, without log's selects for those cases. For the normal
// generator, whose uniforms are never below 2^-54; with AVX2 the selects took a quarter of its
// time in float32.
template <class T>
inline T log_positive(T x) {
  return detail::log_normal_range(x, T(FloatTraits<T>::exponent_bias));
}

// log(1 + y), accurate for small |y|.
template <class T>
inline T log1p(T y) {
  const T u = T(1) + y;
  const T d = u - T(1);
  const T l = vmath::log(u);
  // Goldberg: log(u) * y / (u - 1) corrects the rounding of 1 + y; d == 0 means u == 1.
  const T corrected = l * (y / (d == T(0) ? T(1) : d));
  T result = (d == T(0)) ? y : corrected;
  result = (y == std::numeric_limits<T>::infinity()) ? y : result;
  return result;
}

// 1 / (1 + e^-x) without overflow; also returns e^-|x| for derivative formulas.
template <class T>
inline T sigmoid(T x, T& e_neg_abs) {
  const T e = vmath::exp(-std::abs(x));
  const T s = T(1) / (T(1) + e);
  e_neg_abs = e;
  return x >= T(0) ? s : e * s;
}

// Where exp_neg_half_square caps |x|: e^{-x^2/2} is 0 there in both precisions.
inline constexpr double kHalfSquareCap = 40;

// exp_neg_half_square for x already in [0, kHalfSquareCap] (or NaN), for callers that clamp |x|
// themselves and use the clamped value again (Gelu).
template <class T>
inline T exp_neg_half_square_clamped(T x) {
  const T s = x * x;
  const T r = std::fma(x, x, -s);
  const T e = vmath::exp(T(-0.5) * s);
  return std::fma(T(-0.5) * r, e, e);
}

// e^{-x^2/2}, accurate where x^2 itself rounds: x^2 = s + r exactly (r from an FMA), and
// e^{-x^2/2} = e^{-s/2} e^{-r/2} = e^{-s/2} (1 - r/2) to within (r/2)^2, far below an ulp. Without
// the correction the rounding of x^2 alone would cost up to x^2/4 ulp (360 at x = 38). 0 for
// |x| >= 40, where it underflows in both precisions (infinite x included); NaN stays NaN.
template <class T>
inline T exp_neg_half_square(T x) {
  return exp_neg_half_square_clamped(clamp_keep_nan<T>(std::abs(x), T(0), T(kHalfSquareCap)));
}

namespace detail {

// erfcx on [0, inf) as a polynomial: with t = (a - K) / (a + K), K = 3.75, which maps [0, inf) onto
// [-1, 1), Y(t) = (1 + 2a) erfcx(a) is smooth on [-1, 1] (Y -> 2 / sqrt(pi) as t -> 1). Its
// Chebyshev series, truncated for double or for float and rewritten in powers of t, gives the
// coefficients below (lowest power first; all below 1.3 in magnitude, so Horner's rule is
// stable). Generated by scripts/dev/erfcx_series.py, which also measures their error.
inline constexpr double kErfcxK = 3.75;
// 25 terms: largest relative error 2.92e-16 evaluated in double on [-1, 1].
inline constexpr std::array<double, 25> kErfcxDouble = {
    1.2375126308378275e+00,
    -1.4024059858554697e-01,
    3.5854154854644293e-03,
    8.22767384901452e-02,
    -1.0880393014174886e-01,
    9.230432116037748e-02,
    -5.869339858963677e-02,
    2.8362277418956406e-02,
    -9.746579558029276e-03,
    1.7556258528952954e-03,
    2.937136655913448e-04,
    -2.901540805408417e-04,
    5.164909889268241e-05,
    2.238423915508223e-05,
    -1.1444146237700524e-05,
    -9.73559896736775e-07,
    1.751637648849062e-06,
    -5.7218230603224086e-08,
    -2.5866850716155884e-07,
    2.3263508708859124e-08,
    3.8675334242222354e-08,
    -3.744210080962018e-09,
    -5.1739902140113095e-09,
    3.1114333809799254e-10,
    4.2514714447963895e-10,
};
// 14 terms: largest relative error 1.21e-7 evaluated in float on [-1, 1].
inline constexpr std::array<float, 14> kErfcxFloat = {
    1.2375126e+00f,
    -1.402406e-01f,
    3.5854953e-03f,
    8.227678e-02f,
    -1.08805224e-01f,
    9.230394e-02f,
    -5.868544e-02f,
    2.8364105e-02f,
    -9.770087e-03f,
    1.7511576e-03f,
    3.3016744e-04f,
    -2.8431308e-04f,
    2.204672e-05f,
    1.8521947e-05f,
};

template <class T, std::size_t N, std::size_t... I>
inline T horner_steps(const std::array<T, N>& c, T t, std::index_sequence<I...>) {
  T p = c[N - 1];
  ((p = std::fma(p, t, c[N - 2 - I])), ...);
  return p;
}

// c[0] + c[1] t + ... + c[N-1] t^(N-1) by Horner's rule, written out at compile time: a loop would
// leave control flow inside the callers' loops, which then stay scalar.
template <class T, std::size_t N>
inline T horner(const std::array<T, N>& c, T t) {
  return horner_steps(c, t, std::make_index_sequence<N - 1>());
}

template <class T>
constexpr const auto& erfcx_coefficients() {
  if constexpr (std::is_same_v<T, float>) {
    return kErfcxFloat;
  } else {
    return kErfcxDouble;
  }
}

}  // namespace detail

// erfcx(a) = e^{a^2} erfc(a) for a >= 0, the scaled complementary error function (erfcx(0) = 1,
// erfcx(a) ~ 1 / (a sqrt(pi)) as a grows), to a few ulp over [0, inf): polynomial, division and
// a handful of selects, so it vectorises. erfcx(inf) = 0; NaN stays NaN. For a < 0 (where erfcx
// grows like 2 e^{a^2}) the result is meaningless.
template <class T>
inline T erfcx(T a) {
  const T k = T(detail::kErfcxK);
  const T t = (a - k) / (a + k);
  const T p = detail::horner(detail::erfcx_coefficients<T>(), t);
  const T result = p / std::fma(T(2), a, T(1));
  return a == std::numeric_limits<T>::infinity() ? T(0) : result;
}

}  // namespace selfnorm::vmath
