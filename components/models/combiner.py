"""The stacked categorizer's combiner: a learned, input-aware log-linear pool of the experts.

Each expert e gives class probabilities at every level l. A product's score for a taxonomy path
(master, sub, article) is

    s(path | x) = sum_e sum_l  w_el(x) * log p_el(path_l | x),   w_el(x) = mask_e(x) * softplus(theta_el . c(x))

and the path distribution is softmax(s). `c(x)` describes the input (bias, short title, no title, no image,
no metadata), so the combiner learns how far to trust each expert when its input is poor; `mask_e(x)` is 0
for an expert whose input is absent (the image model on a product without image), so a missing modality
is scored by the experts that apply. The weights double as per-expert temperatures, which is what
calibrates the pool. 15 x 5 = 75 parameters for five experts (plus one offset per path), fitted by L-BFGS
on the negative log-likelihood, near-duplicate listings weighted as one product, with an L2 pull towards
equal weights.

Predicting over whole paths keeps the three levels consistent with the taxonomy by construction: the
predicted path is one the training data holds, and each level's probabilities are marginals of the path
distribution.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

CONDITIONS = ("bias", "short_title", "no_title", "no_image", "no_metadata")
SHORT_TITLE_WORDS = 3  # a title of at most this many words counts as poor ("Nike Men", "Style 12345")
LOG_FLOOR = 1e-7  # an expert's zero probability is not a veto: log p is floored here
INIT_WEIGHT = 0.3  # every expert's weight before fitting (and what the L2 penalty pulls towards)


def input_conditions(title_words: np.ndarray, has_image: np.ndarray, has_metadata: np.ndarray) -> np.ndarray:
    """(N, len(CONDITIONS)) float32 description of each product's input."""
    words = np.asarray(title_words)
    return np.stack([np.ones(len(words)), (words > 0) & (words <= SHORT_TITLE_WORDS), words == 0,
                     ~np.asarray(has_image, bool), ~np.asarray(has_metadata, bool)], axis=1).astype(np.float32)


def path_log_probs(probs: list[np.ndarray], paths: np.ndarray) -> np.ndarray:
    """One expert's per-level probabilities -> (N, L, P) log-probability of each path's class at each level."""
    return np.stack([np.log(np.maximum(p[:, paths[:, lvl]], LOG_FLOOR)) for lvl, p in enumerate(probs)],
                    axis=1).astype(np.float32)


@dataclass
class StackInputs:
    """What the combiner sees for N products: every expert's path log-probs, masks and input conditions, and
    for fitting only, each row's product group (near-duplicate listings share one; see `Combiner.group_weight`)."""

    logp: np.ndarray  # (N, E, L, P)
    mask: np.ndarray  # (N, E) 1 = the expert applies to this product
    cond: np.ndarray  # (N, C)
    group: np.ndarray | None = None  # (N,) product group ids; None = every row its own group

    def __len__(self) -> int:
        return len(self.cond)

    def subset(self, idx: np.ndarray) -> StackInputs:
        return StackInputs(self.logp[idx], self.mask[idx], self.cond[idx],
                           None if self.group is None else self.group[idx])

    def without(self, expert: int) -> StackInputs:
        return self.columns([e for e in range(self.logp.shape[1]) if e != expert])

    def columns(self, experts: list[int]) -> StackInputs:
        """The same products seen by only these experts (by column index)."""
        return StackInputs(self.logp[:, experts], self.mask[:, experts], self.cond, self.group)

    @staticmethod
    def concat(parts: list[StackInputs]) -> StackInputs:
        group = None if any(p.group is None for p in parts) else np.concatenate([p.group for p in parts])
        return StackInputs(*(np.concatenate([getattr(p, k) for p in parts]) for k in ("logp", "mask", "cond")),
                           group)

    def row_weights(self, group_weight: float) -> np.ndarray:
        """(N,) each row weighted by (rows of its group)^-group_weight: at 1 a group of near-duplicate listings
        counts as one product, at 0 every row counts once."""
        if self.group is None or group_weight == 0:
            return np.ones(len(self))
        _, inverse, counts = np.unique(self.group, return_inverse=True, return_counts=True)
        return counts[inverse].astype(np.float64) ** -group_weight


# _initial_theta, _stack_tensors and _path_scores are the pieces of a fit.
def _initial_theta(experts: int, levels: int) -> np.ndarray:
    """(E, L, C) parameters at which every expert's weight is INIT_WEIGHT under every condition."""
    theta = np.zeros((experts, levels, len(CONDITIONS)), dtype=np.float64)
    theta[..., 0] = np.log(np.expm1(INIT_WEIGHT))  # softplus^-1: every weight starts at INIT_WEIGHT
    return theta


def _stack_tensors(x: StackInputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tensors of the inputs, made once per fit (L-BFGS evaluates the loss dozens of times): conditions and
    mask in float64 like the parameters, the (N, E, L, P) log-probabilities kept in float32 (see _path_scores)."""
    cond, mask = (torch.from_numpy(np.asarray(a, dtype=np.float64)) for a in (x.cond, x.mask))
    return cond, mask, torch.from_numpy(np.asarray(x.logp, dtype=np.float32))


def _path_scores(theta: torch.Tensor, bias: torch.Tensor, t: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
                ) -> torch.Tensor:
    """(N, P) unnormalised log-scores of every path: the masked, input-weighted sum of expert log-probs + bias."""
    cond, mask, logp = t
    w = torch.nn.functional.softplus(torch.einsum("elc,nc->nel", theta, cond)) * mask[:, :, None]
    # The contraction with the log-probabilities is the whole cost of a fit, and it is bound by memory
    # traffic: in float32 it reads half the bytes (and the experts' probabilities are float32 to begin with).
    # Parameters, weights, scores and the loss stay float64, so L-BFGS's line search sees a smooth loss.
    return torch.einsum("nel,nelp->np", w.float(), logp).double() + bias


@dataclass
class Combiner:
    experts: tuple[str, ...]
    paths: np.ndarray  # (P, 3) class id per level of every taxonomy path
    theta: np.ndarray = field(default=None)  # (E, L, C); None = initial equal weights
    l2: float = 1e-2
    bias: np.ndarray = field(default=None)  # (P,) per-path offset (prior correction); None = zeros
    fit_bias: bool = False
    balance: float = 0.0  # rows weighted by (their path's row count)^-balance: 0 = plain NLL, 1 = balanced
    # Rows weighted by (rows of their product group)^-group_weight (StackInputs.group), and the path counts of
    # `balance` counted in those weights: the validation split holds groups of up to ~50 identical listings,
    # which at 0 teach a path offset from one group (+3.6 for "Ring" from 26 copies of one steel ring).
    group_weight: float = 0.0

    def __post_init__(self) -> None:
        self.paths = np.asarray(self.paths, dtype=np.int64)
        if self.theta is None:
            self.theta = _initial_theta(len(self.experts), self.paths.shape[1])
        self.theta = np.asarray(self.theta, dtype=np.float64)
        self.bias = np.zeros(len(self.paths)) if self.bias is None else np.asarray(self.bias, dtype=np.float64)

    def weights(self, cond: np.ndarray) -> np.ndarray:
        """(N, E, L) expert weights for inputs described by `cond` (before masking)."""
        return np.logaddexp(0.0, np.einsum("elc,nc->nel", self.theta, cond))

    def fit(self, x: StackInputs, path_y: np.ndarray, max_iter: int = 200) -> Combiner:
        """Minimise the weighted mean NLL of the true paths (rows with path_y < 0 are skipped; row weights from
        `balance` and `group_weight`) + l2 * (|theta - init|^2 + |bias|^2)."""
        t, y, w = self._fit_data(x, path_y)
        init = torch.from_numpy(_initial_theta(len(self.experts), self.paths.shape[1]))
        theta = init.clone().requires_grad_(True)
        bias = torch.zeros(len(self.paths), dtype=torch.float64, requires_grad=self.fit_bias)
        opt = torch.optim.LBFGS([theta, bias] if self.fit_bias else [theta], lr=1.0, max_iter=max_iter,
                                line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = self._loss(_path_scores(theta, bias, t), y, w, theta - init, bias)
            loss.backward()
            return loss

        opt.step(closure)
        self.theta, self.bias = theta.detach().numpy(), bias.detach().numpy()
        return self

    def _fit_data(self, x: StackInputs, path_y: np.ndarray) -> tuple[tuple[torch.Tensor, ...], torch.Tensor,
                                                                      torch.Tensor]:
        """What a fit reads: the input tensors and true paths of the rows with a known path (path_y >= 0), and
        each row's weight (`group_weight`, then `balance` over the weighted path counts), mean 1."""
        keep = np.flatnonzero(path_y >= 0)
        x = x.subset(keep)
        rows = x.row_weights(self.group_weight)
        counts = np.bincount(path_y[keep], weights=rows, minlength=len(self.paths))
        # The floor only guards a zero count: each row's own path has a count of at least its own weight.
        w = torch.from_numpy(rows * np.maximum(counts[path_y[keep]], 1e-12) ** -self.balance)
        return _stack_tensors(x), torch.from_numpy(path_y[keep]), w / w.mean()

    def _loss(self, scores: torch.Tensor, y: torch.Tensor, w: torch.Tensor, theta_step: torch.Tensor,
              bias: torch.Tensor) -> torch.Tensor:
        """The fit's objective: weighted mean NLL + l2 * (|theta - init|^2 + |bias|^2)."""
        return ((torch.nn.functional.cross_entropy(scores, y, reduction="none") * w).mean()
                + self.l2 * ((theta_step ** 2).sum() + (bias ** 2).sum()))

    def path_probs(self, x: StackInputs) -> np.ndarray:
        with torch.no_grad():
            scores = _path_scores(torch.from_numpy(self.theta), torch.from_numpy(self.bias), _stack_tensors(x))
            return torch.softmax(scores, dim=1).numpy()

    def nll(self, x: StackInputs, path_y: np.ndarray) -> float:
        keep = path_y >= 0
        p = self.path_probs(x.subset(np.flatnonzero(keep)))
        return float(-np.log(np.maximum(p[np.arange(len(p)), path_y[keep]], 1e-12)).mean())

    def predict(self, x: StackInputs, n_classes: list[int]) -> tuple[list[np.ndarray], np.ndarray]:
        """(per level (N, classes) marginal probabilities, (N, 3) class ids of the most probable path)."""
        pp = self.path_probs(x)
        marginals = []
        for lvl, n in enumerate(n_classes):
            onehot = np.zeros((len(self.paths), n), dtype=np.float64)
            onehot[np.arange(len(self.paths)), self.paths[:, lvl]] = 1.0
            marginals.append((pp @ onehot).astype(np.float32))
        best = pp.argmax(1) if len(pp) else np.zeros(0, dtype=np.int64)
        return marginals, self.paths[best]

    def without(self, expert: str) -> Combiner:
        """An unfitted combiner over the other experts (leave-one-expert-out ablation)."""
        return self.over(tuple(e for e in self.experts if e != expert))

    def over(self, experts: tuple[str, ...]) -> Combiner:
        """An unfitted combiner with the same settings over these experts."""
        return Combiner(tuple(experts), self.paths, None, self.l2, fit_bias=self.fit_bias, balance=self.balance,
                        group_weight=self.group_weight)

    def to_dict(self) -> dict:
        return {"experts": list(self.experts), "conditions": list(CONDITIONS), "l2": self.l2,
                "paths": self.paths.tolist(), "theta": np.round(self.theta, 6).tolist(),
                "bias": np.round(self.bias, 6).tolist(), "fit_bias": self.fit_bias, "balance": self.balance,
                "group_weight": self.group_weight}

    @classmethod
    def from_dict(cls, d: dict) -> Combiner:
        if list(d.get("conditions", [])) != list(CONDITIONS):
            raise ValueError(f"combiner conditions {d.get('conditions')} differ from this code's {list(CONDITIONS)}")
        return cls(tuple(d["experts"]), np.asarray(d["paths"]), np.asarray(d["theta"]), float(d["l2"]),
                   np.asarray(d["bias"]), bool(d["fit_bias"]), float(d["balance"]),
                   float(d.get("group_weight", 0.0)))  # written before group weights: every row counted once


def path_index(labels: np.ndarray, paths: np.ndarray) -> np.ndarray:
    """Index into `paths` of each row's (master, sub, article) label triple; -1 where it is not a known path."""
    index = {tuple(p): i for i, p in enumerate(paths.tolist())}
    return np.array([index.get(tuple(r), -1) for r in np.asarray(labels).tolist()], dtype=np.int64)
