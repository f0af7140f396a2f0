#!/usr/bin/env python3
"""Coefficients of selfnorm's erfcx (sim/core/vmath.hpp), from mpmath at 50 digits.

erfcx(a) = exp(a^2) erfc(a), a >= 0. With t = (a - K) / (a + K), which maps [0, inf) onto
[-1, 1), the function Y(t) = (1 + 2a) erfcx(a) is smooth on [-1, 1] and tends to 2 / sqrt(pi) as
t -> 1 (Shepherd and Laframboise, Math. Comp. 36 (1981) 249-253, use the same variable). Its
Chebyshev series is truncated where the terms fall below the target precision and rewritten as
a power series in t (the coefficients stay below 1.3 in magnitude, so Horner's rule is stable).

    /usr/bin/python3 scripts/dev/erfcx_series.py

prints the C++ tables for double (25 terms) and float (14 terms), and the largest relative error of
each polynomial, with its coefficients rounded and evaluated in its own precision, on 20001 points
of [-1, 1] (against Y at the same rounded t).
Needs Debian's python3-mpmath and python3-numpy.
"""
import mpmath as mp
import numpy as np

mp.mp.dps = 50
K = mp.mpf("3.75")
NODES = 96


def y_of_t(t):
    if t == 1:
        return 2 / mp.sqrt(mp.pi)
    a = K * (1 + t) / (1 - t)
    return (1 + 2 * a) * mp.exp(a * a) * mp.erfc(a)


def chebyshev_coefficients():
    nodes = [mp.cos(mp.pi * (k + mp.mpf("0.5")) / NODES) for k in range(NODES)]
    values = [y_of_t(t) for t in nodes]
    c = [2 * mp.fsum(v * mp.cos(mp.pi * j * (k + mp.mpf("0.5")) / NODES) for k, v in enumerate(values)) / NODES
         for j in range(NODES)]
    c[0] /= 2
    return c


def power_series(cheb):
    """Monomial coefficients of sum_j cheb[j] T_j(t), in exact (mpmath) arithmetic."""
    poly = [mp.mpf(0)] * len(cheb)
    t_prev, t_cur = [mp.mpf(1)], [mp.mpf(0), mp.mpf(1)]  # T_0, T_1
    for j, cj in enumerate(cheb):
        tj = t_prev if j == 0 else t_cur if j == 1 else None
        if j >= 2:
            t_next = [mp.mpf(0)] + [2 * v for v in t_cur]  # 2 t T_{j-1}
            for i, v in enumerate(t_prev):
                t_next[i] -= v
            t_prev, t_cur = t_cur, t_next
            tj = t_cur
        for i, v in enumerate(tj):
            poly[i] += cj * v
    return poly


def horner(coefficients, t, dtype):
    """Horner's rule in dtype, each step one fused multiply-add: p t + c is exact in float64 for
    float32 operands before its one rounding to float32 (for float64 the product rounds too: a
    slight overestimate of the error)."""
    acc = dtype(coefficients[-1])
    t = dtype(t)
    for c in reversed(coefficients[:-1]):
        acc = dtype(np.float64(acc) * np.float64(t) + np.float64(c))
    return acc


def main():
    cheb = chebyshev_coefficients()
    ts = np.linspace(-1.0, 1.0, 20001)
    for name, terms, dtype, ctype, suffix in (("kErfcxDouble", 25, np.float64, "double", ""),
                                              ("kErfcxFloat", 14, np.float32, "float", "f")):
        coefficients = [dtype(float(v)) for v in power_series(cheb[:terms])]
        worst = max(abs(mp.mpf(float(horner(coefficients, dtype(t), dtype))) - y_of_t(mp.mpf(float(dtype(t)))))
                    / y_of_t(mp.mpf(float(dtype(t)))) for t in ts)
        print(f"// {terms} terms: largest relative error {mp.nstr(worst, 3)} evaluated in {ctype} on [-1, 1].")
        print(f"inline constexpr std::array<{ctype}, {terms}> {name} = {{")
        for v in coefficients:
            print(f"    {np.format_float_scientific(v, unique=True, exp_digits=2)}{suffix},")
        print("};")


if __name__ == "__main__":
    main()
