"""Batched L-BFGS: many independent smooth problems minimised at once, each with its own line search."""

from __future__ import annotations

import torch


def minimize_lbfgs(obj, theta: torch.Tensor, *, max_iter: int, gtol: float, ftol: float,
           history: int, max_ls: int = 20) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Minimise every problem independently: per-problem two-loop recursion, per-problem
    backtracking (Armijo, quadratic interpolation) line search, per-problem convergence.
    ``theta`` is ``(B, D)`` over all flat (feature set, problem) pairs; objective evaluations
    run only on the pairs still optimising (and, within a line search, still searching).
    ``obj`` offers ``context(idx)`` (what evaluations of the pairs ``idx`` need) and
    ``value_grad(theta, ctx)`` -> objective values and gradients. Returns theta, iterations,
    converged flags (all ``(B, ...)``)."""
    B, D = theta.shape
    dev, dt = theta.device, theta.dtype
    all_idx = torch.arange(B, device=dev)
    ctx = obj.context(all_idx)
    f, g = obj.value_grad(theta, ctx)
    ctx_act = all_idx
    m = history
    S = torch.zeros(m, B, D, device=dev, dtype=dt)
    Yh = torch.zeros_like(S)
    rho = torch.zeros(m, B, device=dev, dtype=dt)
    gamma = torch.ones(B, device=dev, dtype=dt)
    fresh = torch.ones(B, dtype=torch.bool, device=dev)      # no curvature pair yet
    fails = torch.zeros(B, dtype=torch.int64, device=dev)
    n_iter = torch.zeros(B, dtype=torch.int64, device=dev)
    active = g.abs().amax(-1) > gtol
    converged = ~active
    k = 0
    for _ in range(max_iter):
        act = active.nonzero().squeeze(1)
        A = len(act)
        if A == 0:
            break
        # two-loop recursion on the active problems (slots with rho == 0 are empty)
        g_a = g[act]
        q = g_a.clone()
        order = [(k - 1 - j) % m for j in range(min(k, m))]
        S_a = [S[i, act] for i in order]
        Y_a = [Yh[i, act] for i in order]
        rho_a = [rho[i, act] for i in order]
        alphas = []
        for s_i, y_i, r_i in zip(S_a, Y_a, rho_a):
            a = r_i * (s_i * q).sum(-1)
            q.sub_(a.unsqueeze(-1) * y_i)
            alphas.append(a)
        r = q * gamma[act].unsqueeze(-1)
        for s_i, y_i, r_i, a in reversed(list(zip(S_a, Y_a, rho_a, alphas))):
            beta = r_i * (y_i * r).sum(-1)
            r.add_(s_i * (a - beta).unsqueeze(-1))
        d = -r
        gtd = (g_a * d).sum(-1)
        bad = ~(gtd < 0)                                           # not a descent direction
        if bool(bad.any()):
            d = torch.where(bad.unsqueeze(-1), -g_a, d)
            gtd = torch.where(bad, -(g_a * g_a).sum(-1), gtd)
        # first step of a fresh problem: torch's LBFGS rule, step length <= 1
        t = torch.where(fresh[act], torch.clamp(1.0 / g_a.abs().sum(-1).clamp_min(1e-30), max=1.0),
                        torch.ones(A, device=dev, dtype=dt))
        th_a, f_a = theta[act], f[act]
        if ctx_act is None or len(ctx_act) != A or not bool((ctx_act == act).all()):
            ctx, ctx_act = obj.context(act), act          # the active set changed: gather anew
        accepted = torch.zeros(A, dtype=torch.bool, device=dev)
        th_new, f_new, g_new_a = th_a.clone(), f_a.clone(), g_a.clone()   # a failed search keeps the old point
        for _ls in range(max_ls):
            pend = (~accepted).nonzero().squeeze(1)
            if len(pend) == A:
                trial = th_a + t.unsqueeze(-1) * d
                f_t, g_t = obj.value_grad(trial, ctx)
            else:
                trial = th_a[pend] + t[pend].unsqueeze(-1) * d[pend]
                f_t, g_t = obj.value_grad(trial, obj.context(act[pend]))
            ok = torch.isfinite(f_t) & (f_t <= f_a[pend] + 1e-4 * t[pend] * gtd[pend])
            if bool(ok.any()):
                okp = pend[ok]
                th_new[okp] = trial[ok]
                f_new[okp] = f_t[ok]
                g_new_a[okp] = g_t[ok]
                accepted[okp] = True
            if bool(accepted.all()):
                break
            # quadratic interpolation of the step, kept within [0.1, 0.5] of the last one
            no = pend[~ok]
            tt, ff, gg, fn = t[no], f_a[no], gtd[no], f_t[~ok]
            denom = 2.0 * (fn - ff - gg * tt)
            t_q = torch.where(torch.isfinite(fn) & (denom > 0), -gg * tt * tt / denom.clamp_min(1e-30), 0.5 * tt)
            t[no] = torch.minimum(torch.maximum(t_q, 0.1 * tt), 0.5 * tt)
        failed_a = ~accepted
        del g_t
        # curvature pairs for the active problems
        s = th_new - th_a
        yv = g_new_a - g_a
        sy = (s * yv).sum(-1)
        yy = (yv * yv).sum(-1)
        good = accepted & (sy > 1e-10 * yy) & (yy > 0)
        slot = k % m
        S[slot].zero_()
        Yh[slot].zero_()
        rho[slot].zero_()
        S[slot, act] = torch.where(good.unsqueeze(-1), s, torch.zeros_like(s))
        Yh[slot, act] = torch.where(good.unsqueeze(-1), yv, torch.zeros_like(yv))
        rho[slot, act] = torch.where(good, 1.0 / sy.clamp_min(1e-30), torch.zeros_like(sy))
        gamma[act] = torch.where(good, sy / yy.clamp_min(1e-30), gamma[act])
        fresh[act] = fresh[act] & ~good
        k += 1
        # a failed line search drops that problem's memory and retries once with steepest descent
        fails[act] = torch.where(failed_a, fails[act] + 1, torch.zeros_like(fails[act]))
        if bool(failed_a.any()):
            lost = act[failed_a]
            rho[:, lost] = 0.0
            fresh[lost] = True
        n_iter[act] += 1
        rel = (f_a - f_new).abs() / torch.maximum(torch.maximum(f_a.abs(), f_new.abs()), torch.ones_like(f_a))
        small_g = g_new_a.abs().amax(-1) <= gtol
        ok_conv = small_g | (accepted & (rel <= ftol))
        stalled = fails[act] >= 2
        # no decrease the dtype can resolve, with a gradient within 100x the tolerance: converged
        # to the precision of the arithmetic (float32 typically stalls at a few times 1e-5)
        converged[act] = ok_conv | (stalled & (g_new_a.abs().amax(-1) <= 100 * gtol))
        active[act] = ~(ok_conv | stalled)
        theta[act] = th_new
        f[act] = f_new
        g[act] = g_new_a
    return theta, n_iter, converged

