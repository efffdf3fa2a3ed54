"""The MLP regression probe: one hidden ReLU layer, batched over feature sets, targets and folds.

Every (feature set, target column, fold) is an independent network; they are stacked so one
batched matrix product serves them all. Features and targets are standardised on each fold's
training rows; the network trains by full-batch Adam on its inner-fit rows with an L2 penalty and
stops early on the inner-validation rows (the best epoch's weights are kept), so the strength of
the fit is chosen on the training fold only. The predictive variance is the inner-validation MSE.
"""

from __future__ import annotations

import numpy as np
import torch

from logitleak.probing.adam import adam_step


def fit_mlp_regression(X: torch.Tensor, Y: torch.Tensor, train, test, inner_fit, inner_val, *, hidden: int = 32,
                       alpha: float = 1e-3, lr: float = 1e-2, max_epochs: int = 400, patience: int = 30,
                       seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold MLP predictions: ``X`` ``(F, n, d)``, ``Y`` ``(n, B)``, split masks ``(S, n)``.
    Returns ``(pred (F, B, n), sigma2 (F, B, n))`` like :func:`logitleak.probing.regression.fit_ridge_cv`."""
    F, n, d = X.shape
    B = Y.shape[1]
    S = train.shape[0]
    pred = np.zeros((F, B, n))
    sigma2 = np.zeros((F, B, n))
    Xf, Yf = X.float(), Y.float()
    for s in range(S):
        tr = torch.as_tensor(train[s])
        te = torch.as_tensor(test[s])
        mu, sd = Xf[:, tr].mean(1, keepdim=True), Xf[:, tr].std(1, keepdim=True).clamp_min(1e-6)
        Z = (Xf - mu) / sd                                                   # (F, n, d)
        ym, ys = Yf[tr].mean(0), Yf[tr].std(0).clamp_min(1e-9)               # (B,)
        T = ((Yf - ym) / ys).T                                               # (B, n)
        gen = torch.Generator().manual_seed(int(seed) * 1009 + s)
        W1 = (torch.rand(F, B, d, hidden, generator=gen) * 2 - 1) / d ** 0.5
        b1 = torch.zeros(F, B, 1, hidden)
        W2 = (torch.rand(F, B, hidden, 1, generator=gen) * 2 - 1) / hidden ** 0.5
        b2 = torch.zeros(F, B, 1, 1)
        params = [W1, b1, W2, b2]
        m1 = [torch.zeros_like(p) for p in params]
        m2 = [torch.zeros_like(p) for p in params]
        rows = torch.cat([torch.as_tensor(np.flatnonzero(m[s])) for m in (inner_fit, inner_val)])
        n_fit = int(inner_fit[s].sum())
        Zin = Z[:, rows].unsqueeze(1)                                        # (F, 1, m_fit + m_val, d)
        Tfi, Tva = T[:, rows[:n_fit]], T[:, rows[n_fit:]]                    # (B, m)

        best = torch.full((F, B), float("inf"))
        best_params = [p.clone() for p in params]
        since = torch.zeros((F, B), dtype=torch.long)
        for t in range(1, max_epochs + 1):
            # one pass over the inner-fit and inner-validation rows: the validation error of the
            # current weights decides early stopping, the fit rows' error gives the step
            leaves = [p.requires_grad_() for p in params]
            out = (torch.relu(Zin @ leaves[0] + leaves[1]) @ leaves[2] + leaves[3]).squeeze(-1)   # (F, B, m)
            with torch.no_grad():
                v = ((out[..., n_fit:] - Tva) ** 2).mean(-1)
                better = v < best - 1e-6
                best = torch.where(better, v, best)
                since = torch.where(better, torch.zeros_like(since), since + 1)
                for bp, p in zip(best_params, params):
                    bp.copy_(torch.where(better.view(F, B, *([1] * (p.dim() - 2))), p, bp))
                if bool((since > patience).all()):
                    break
            loss = ((out[..., :n_fit] - Tfi) ** 2).mean(-1)                 # (F, B)
            penalty = alpha * (leaves[0] ** 2).sum((-2, -1)) + alpha * (leaves[2] ** 2).sum((-2, -1))
            grads = torch.autograd.grad((loss + penalty).sum(), leaves)
            with torch.no_grad():
                params = [p.detach() for p in leaves]
                adam_step(params, grads, m1, m2, t, [lr] * len(params))
        with torch.no_grad():
            W1b, b1b, W2b, b2b = best_params
            out = (torch.relu(Z[:, te].unsqueeze(1) @ W1b + b1b) @ W2b + b2b).squeeze(-1)   # (F, B, r)
            te_idx = np.flatnonzero(test[s])
            pred[:, :, te_idx] = (out * ys[None, :, None] + ym[None, :, None]).double().numpy()
            sigma2[:, :, te_idx] = (best * ys[None] ** 2).clamp_min(1e-12).double().numpy()[..., None]
    return pred, sigma2
