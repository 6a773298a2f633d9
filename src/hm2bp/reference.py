"""Slow, literal references written straight from the definitions in docs/algorithm.md (scalar loops, float64).

They exist to test the fast paths (:mod:`hm2bp.neuron`, :mod:`hm2bp.spsp`, :mod:`hm2bp.functional`) and to make the
math readable. They work on one sample at a time, on lists of spike times, and are far too slow for training.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from hm2bp.functional import LayerSetup
from hm2bp.neuron import LIFParams
from hm2bp.spsp import PSPKernel


def lif_reference(currents: np.ndarray, params: LIFParams, lateral_w0: float = 0.0) -> np.ndarray:
    """docs/algorithm.md §1, one neuron at a time (lateral inhibition reads the previous step of all neurons).

    ``currents (T, N)`` → spikes ``(T, N)``.
    """
    T, N = currents.shape
    s = np.zeros((T, N))
    v = [0.0] * N
    c = [0.0] * N
    ref = [0] * N
    for t in range(1, T):
        fired_prev = s[t - 1].sum()
        for i in range(N):
            v[i] = v[i] * (1.0 - 1.0 / params.tau_m)  # 1. leak
            c[i] = c[i] * (1.0 - 1.0 / params.tau_s)
            c[i] = c[i] + currents[t - 1, i]  # 2. input with one-step delay
            if lateral_w0:
                c[i] = c[i] - lateral_w0 * (fired_prev - s[t - 1, i])
            v[i] = v[i] + c[i] / params.tau_s  # 3. integrate
            if ref[i] > 0:  # 4. refractory
                v[i] = 0.0
                ref[i] -= 1
            if v[i] > params.threshold - params.threshold_eps:  # 5. fire
                s[t, i] = 1.0
                ref[i] = params.t_ref
                v[i] = 0.0
    return s


def spike_times(train: np.ndarray) -> list[list[int]]:
    """``(T, N)`` 0/1 → per neuron, its sorted spike times."""
    return [list(np.flatnonzero(train[:, n])) for n in range(train.shape[1])]


def _k_original(sigma: int, delta: int, tau_m: float, tau_s: float) -> float:
    """Authors' pairwise kernel K(σ, Δ) (docs/algorithm.md §1 "Paper form", §4)."""
    if sigma < 0 or delta < 0:
        return 0.0
    m = min(sigma, delta)
    return math.exp(-max(delta - sigma, 0) / tau_s) * (math.exp(-m / tau_m) - math.exp(-m / tau_s)) / (
        1.0 - tau_s / tau_m)


def _p_exact(k: int, tau_m: float, tau_s: float) -> float:
    """Discrete kernel p(k) = (d_m^k − d_s^k)/(1 − κ) for k > 0, else 0 (docs/algorithm.md §13)."""
    if k <= 0:
        return 0.0
    return ((1 - 1 / tau_m) ** k - (1 - 1 / tau_s) ** k) / (1.0 - tau_s / tau_m)


def spsp_pair_reference(pre_t: Sequence[int], post_t: Sequence[int], kernel: PSPKernel) -> float:
    """S-PSP of one (post, pre) pair from spike-time lists, by the pairwise definition (no fallbacks)."""
    total = 0.0
    if kernel.convention == "original":
        last_reset = 1  # r_1 = 1
        for tk in post_t:
            lb = 1 if kernel.window is None else max(1, tk - kernel.window)
            for tm in pre_t:
                if tm < lb:
                    continue
                if tm >= tk:
                    break
                q = tm + kernel.t_ref  # docs/algorithm.md P1: pre spike shifted by t_ref
                if q > tk:
                    continue
                total += _k_original(tk - last_reset, tk - q, kernel.tau_m, kernel.tau_s)
            last_reset = tk + kernel.t_ref
        return total
    last_reset = 0  # r_1 = 0
    for tk in post_t:
        decay = (1 - 1 / kernel.tau_m) ** (tk - last_reset)
        for tm in pre_t:
            total += _p_exact(tk - tm, kernel.tau_m, kernel.tau_s)
            total -= decay * _p_exact(last_reset - tm, kernel.tau_m, kernel.tau_s)
        last_reset = tk + kernel.t_ref
    return total


def spsp_reference(pre: np.ndarray, post: np.ndarray, kernel: PSPKernel) -> np.ndarray:
    """``pre (T, N_in)``, ``post (T, N_out)`` → ``e (N_out, N_in)``, pair by pair."""
    pre_t, post_t = spike_times(pre), spike_times(post)
    return np.array([[spsp_pair_reference(pj, pi, kernel) for pj in pre_t] for pi in post_t]).reshape(
        post.shape[1], pre.shape[1])


def hm2bp_layer_reference(pre: np.ndarray, post: np.ndarray, weight: np.ndarray, delta: np.ndarray,
                          setup: LayerSetup, label: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One sample's HM2-BP weight gradient and error to the layer below, literally from docs/algorithm.md §4–§6, §13.

    Args:
        pre: ``(T, N_in)`` input trains; post: ``(T, N_out)`` output trains from the forward pass.
        weight: ``(N_out, N_in)``; delta: ``(N_out,)`` ∂L/∂o from above (output: boosted, dead-zoned count error).
        setup: the layer's setup (rule, thresholds, lateral strength, whether it is the output layer).
        label: the target class (output layer only).

    Returns:
        ``(dW (N_out, N_in), δ_below (N_in,))``.
    """
    rule, kernel, nu = setup.rule, setup.kernel, setup.lif.threshold
    n_out, n_in = weight.shape
    T = post.shape[0]
    lam = np.ones(n_out)
    if setup.is_output and rule.lateral_factor and setup.lateral_w0 > 0:
        o0 = post.sum(0)
        e_oo = spsp_reference(post, post, kernel)  # e_oo[l, i]: output i onto output l
        d = [(1.0 / nu) if (o0[x] > 0 or x == label) else 0.0 for x in range(n_out)]

        def r(l_: int, i_: int) -> float:
            return e_oo[l_, i_] / o0[i_] if (o0[l_] > 0 and o0[i_] > 0) else 1.0

        for i in range(n_out):
            acc = sum(d[i] * d[l_] * r(l_, i) * r(i, l_) for l_ in range(n_out) if l_ != i)
            denom = 1.0 - setup.lateral_w0**2 * acc
            if rule.lateral_min_denominator is not None:
                denom = max(denom, rule.lateral_min_denominator)
            lam[i] = 1.0 / denom
    post = post.copy()
    if setup.is_output and rule.silent_target_patch and label is not None and post[:, label].sum() == 0:
        period = T // setup.target_count
        for t in range(period, T, period):
            post[t, label] = 1.0
    o, o_pre = post.sum(0), pre.sum(0)
    e = spsp_reference(pre, post, kernel)
    g = delta / nu
    dw = np.zeros_like(weight)
    for i in range(n_out):
        if rule.side_effect:
            rho = [e[i, l_] / o[i] if o[i] > 0 else rule.silent_post_rho for l_ in range(n_in)]
            side = sum(weight[i, l_] * rho[l_] for l_ in range(n_in)) / nu
        else:
            side = 0.0
        for j in range(n_in):
            e_hat = e[i, j] if not (o[i] == 0 and o_pre[j] > 0) else rule.silent_post_psp
            dw[i, j] = g[i] * e_hat * (1.0 + side) * lam[i]
    below = np.zeros(n_in)
    for j in range(n_in):
        for i in range(n_out):
            if not rule.effect_ratio:
                ratio = 1.0
            elif o[i] > 0 and o_pre[j] > 0:
                ratio = e[i, j] / o_pre[j]
            else:
                ratio = rule.silent_effect_ratio
            below[j] += g[i] * weight[i, j] * ratio
    return dw, below


def _pair_terms(e: float, o_post: float, o_pre: float, setup: LayerSetup) -> tuple[float, float, float]:
    """Per pair: (ρ for the side effect, ê for the weight gradient, r for the error below), docs/algorithm.md §4–§5."""
    rule = setup.rule
    rho = e / o_post if o_post > 0 else rule.silent_post_rho
    e_hat = rule.silent_post_psp if (o_post == 0 and o_pre > 0) else e
    if not rule.effect_ratio:
        ratio = 1.0
    elif o_post > 0 and o_pre > 0:
        ratio = e / o_pre
    else:
        ratio = rule.silent_effect_ratio
    return rho, e_hat, ratio


def conv_forward_reference(pre: np.ndarray, weight: np.ndarray, params: LIFParams) -> np.ndarray:
    """docs/algorithm.md §6 conv forward for one sample: ``pre (T, C, H, W)`` → spikes ``(T, C', H', W')``, currents by
    loops."""
    T, C, H, W = pre.shape
    c_out, _, K, _ = weight.shape
    ho, wo = H - K + 1, W - K + 1
    cur = np.zeros((T, c_out, ho, wo))
    for t in range(T):
        for co in range(c_out):
            for y in range(ho):
                for x in range(wo):
                    cur[t, co, y, x] = sum(weight[co, c, u, v] * pre[t, c, y + u, x + v]
                                           for c in range(C) for u in range(K) for v in range(K))
    return lif_reference(cur.reshape(T, -1), params).reshape(T, c_out, ho, wo)


def hm2bp_conv_reference(pre: np.ndarray, post: np.ndarray, weight: np.ndarray, delta: np.ndarray,
                         setup: LayerSetup) -> tuple[np.ndarray, np.ndarray]:
    """One sample's HM2-BP gradients of a spiking conv layer, pair by pair (docs/algorithm.md §6 with §4–§5's
    fallbacks).

    Output pixel ``p = (c', y, x)`` sees inputs ``q = (c, y+u, x+v)`` through the shared weight ``w[c', c, u, v]``:
    ``∂E/∂w[c', c, u, v] = Σ_p g_p ê_pq (1 + S_p)``, ``S_p = (1/ν) Σ_q w ρ_pq``, ``δ_q = Σ_p g_p w r_pq``.

    Args:
        pre: ``(T, C, H, W)``; post: ``(T, C', H', W')``; weight: ``(C', C, K, K)``; delta: ``(C', H', W')``.

    Returns:
        ``(dW (C', C, K, K), δ_below (C, H, W))``.
    """
    rule, kernel, nu = setup.rule, setup.kernel, setup.lif.threshold
    _, C, H, W = pre.shape
    c_out, _, K, _ = weight.shape
    o, o_pre = post.sum(0), pre.sum(0)
    g = delta / nu
    dw = np.zeros_like(weight)
    below = np.zeros((C, H, W))
    for co in range(c_out):
        for y in range(post.shape[2]):
            for x in range(post.shape[3]):
                post_t = list(np.flatnonzero(post[:, co, y, x]))
                pairs = []
                for c in range(C):
                    for u in range(K):
                        for v in range(K):
                            e = spsp_pair_reference(list(np.flatnonzero(pre[:, c, y + u, x + v])), post_t, kernel)
                            pairs.append(((c, u, v), _pair_terms(e, o[co, y, x], o_pre[c, y + u, x + v], setup)))
                side = sum(weight[co, c, u, v] * rho for (c, u, v), (rho, _, _) in pairs) / nu \
                    if rule.side_effect else 0.0
                for (c, u, v), (_, e_hat, ratio) in pairs:
                    dw[co, c, u, v] += g[co, y, x] * e_hat * (1.0 + side)
                    below[c, y + u, x + v] += g[co, y, x] * weight[co, c, u, v] * ratio
    return dw, below


def hm2bp_pool_reference(pre: np.ndarray, post: np.ndarray, delta: np.ndarray, size: int,
                         setup: LayerSetup) -> np.ndarray:
    """One sample's error below a spiking pooling layer, pair by pair (docs/algorithm.md §6):
    ``δ_q = (δ_p/scale)·r_pq`` for the window's pooling neuron ``p``, ``scale = size²`` (authors) or ``ν_pool``.

    Args:
        pre: ``(T, C, H, W)``; post: ``(T, C, H/size, W/size)``; delta: ``(C, H/size, W/size)``.
    """
    scale = size * size if setup.rule.pool_error_scale == "window" else setup.lif.threshold
    o, o_pre = post.sum(0), pre.sum(0)
    below = np.zeros(pre.shape[1:])
    for c in range(post.shape[1]):
        for y in range(post.shape[2]):
            for x in range(post.shape[3]):
                post_t = list(np.flatnonzero(post[:, c, y, x]))
                for u in range(size):
                    for v in range(size):
                        q = (c, y * size + u, x * size + v)
                        e = spsp_pair_reference(list(np.flatnonzero(pre[(slice(None), *q)])), post_t, setup.kernel)
                        _, _, ratio = _pair_terms(e, o[c, y, x], o_pre[q], setup)
                        below[q] += delta[c, y, x] / scale * ratio
    return below
