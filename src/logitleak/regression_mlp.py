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

MLP_KEYS = {"hidden", "alpha", "lr", "max_epochs", "patience"}


def fit_mlp_regression(X: torch.Tensor, Y: torch.Tensor, train, test, inner_fit, inner_val, *, hidden: int = 32,
                       alpha: float = 1e-3, lr: float = 1e-2, max_epochs: int = 400, patience: int = 30,
                       seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold MLP predictions: ``X`` ``(F, n, d)``, ``Y`` ``(n, B)``, split masks ``(S, n)``.
    Returns ``(pred (F, B, n), sigma2 (F, B, n))`` like :func:`logitleak.regression.fit_ridge_cv`."""
    F, n, d = X.shape
    B = Y.shape[1]
    S = train.shape[0]
    pred = np.zeros((F, B, n))
    sigma2 = np.zeros((F, B, n))
    Xf, Yf = X.float(), Y.float()
    for s in range(S):
        tr = torch.as_tensor(train[s])
        fi, va, te = (torch.as_tensor(m[s]) for m in (inner_fit, inner_val, test))
        mu, sd = Xf[:, tr].mean(1, keepdim=True), Xf[:, tr].std(1, keepdim=True).clamp_min(1e-6)
        Z = (Xf - mu) / sd                                                   # (F, n, d)
        ym, ys = Yf[tr].mean(0), Yf[tr].std(0).clamp_min(1e-9)               # (B,)
        T = ((Yf - ym) / ys).T                                               # (B, n)
        gen = torch.Generator().manual_seed(int(seed) * 1009 + s)
        W1 = (torch.rand(F, B, d, hidden, generator=gen) * 2 - 1) / d ** 0.5
        b1 = torch.zeros(F, B, 1, hidden)
        W2 = (torch.rand(F, B, hidden, 1, generator=gen) * 2 - 1) / hidden ** 0.5
        b2 = torch.zeros(F, B, 1, 1)
        params = [p.requires_grad_() for p in (W1, b1, W2, b2)]
        opt = torch.optim.Adam(params, lr=lr)
        Zfi, Zva = Z[:, fi].unsqueeze(1), Z[:, va].unsqueeze(1)              # (F, 1, m, d)
        Tfi, Tva = T[:, fi], T[:, va]                                        # (B, m)

        def forward(inp):
            return (torch.relu(inp @ params[0] + params[1]) @ params[2] + params[3]).squeeze(-1)  # (F, B, m)

        best = torch.full((F, B), float("inf"))
        best_params = [p.detach().clone() for p in params]
        since = torch.zeros((F, B), dtype=torch.long)
        for _ in range(max_epochs):
            opt.zero_grad()
            loss = ((forward(Zfi) - Tfi) ** 2).mean(-1)                     # (F, B)
            penalty = alpha * (params[0] ** 2).sum((-2, -1)) + alpha * (params[2] ** 2).sum((-2, -1))
            (loss + penalty).sum().backward()
            opt.step()
            with torch.no_grad():
                v = ((forward(Zva) - Tva) ** 2).mean(-1)
                better = v < best - 1e-6
                best = torch.where(better, v, best)
                since = torch.where(better, torch.zeros_like(since), since + 1)
                for bp, p in zip(best_params, params):
                    mask = better.view(F, B, *([1] * (p.dim() - 2)))
                    bp.copy_(torch.where(mask, p.detach(), bp))
                if bool((since > patience).all()):
                    break
        with torch.no_grad():
            W1b, b1b, W2b, b2b = best_params
            out = (torch.relu(Z[:, te].unsqueeze(1) @ W1b + b1b) @ W2b + b2b).squeeze(-1)   # (F, B, r)
            te_idx = np.flatnonzero(test[s])
            pred[:, :, te_idx] = (out * ys[None, :, None] + ym[None, :, None]).double().numpy()
            sigma2[:, :, te_idx] = (best * ys[None] ** 2).clamp_min(1e-12).double().numpy()[..., None]
    return pred, sigma2
