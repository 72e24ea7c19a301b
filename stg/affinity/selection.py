"""TAG network selection (Fifty et al. 2021): at most k task groups from an inter-task affinity matrix.

Notation: T tasks, A (T, T) float, A[t, u] = the value used when scoring task t inside a group that
also contains u (TAG: the lookahead affinity of source u onto target t, so rows are recipients;
CS: the gradient cosine, symmetric; HOA: the validation loss or error of t when trained with u).
The diagonal is only used by HOA (the single-task value). The objective is the one of the official
notebooks ``tag/network_selection/{TAG,HOA}_network_selection.ipynb``:

    s(G, t) = (1 / (|G| - 1)) * sum_{u in G, u != t} A[t, u]       for t in G, |G| >= 2
    s({t}, t) = -1e6          ("tag", "cs": a task is never served alone if avoidable)
    s({t}, t) = A[t, t]        ("hoa": the single-task loss / error)

    J(S) = (1 / T) * sum_t  best_{G in S, t in G} s(G, t)

over selections S of at most k distinct non-empty groups that cover every task; groups may
overlap, and each task is served by the selected group where it scores best. best = max and J is
maximised for "tag" and "cs"; best = min and J is minimised for "hoa". (CelebA's HOA values are
accuracies: pass 100 - accuracy, as the notebook does.)

Internally everything is a maximisation of gains W = A ("tag", "cs") or W = -A ("hoa"), with
singleton gains g1[t] = -1e6 or -A[t, t]. Two solvers:

* exact (T <= EXACT_MAX_TASKS by default): a MILP (scipy.optimize.milp / HiGHS) over all 2^T - 1
  candidate groups; it has the optimum of the official exhaustive enumeration (which costs
  C(2^T - 1, k) and is hopeless beyond T = 9, k = 3).
* scalable: candidate groups from dendrograms of the symmetrised affinity, greedy growth and local
  search; the best <= k of them are chosen by the same MILP restricted to the candidates, and an
  honest upper bound on the true optimum over all 2^T - 1 groups is reported (see _budget_bound).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.cluster.hierarchy import linkage
from scipy.optimize import Bounds, LinearConstraint, milp

METHODS = ("tag", "cs", "hoa")
SINGLETON_SCORE = -1e6  # TAG / CS notebooks: s({t}, t)
EXACT_MAX_TASKS = 12    # default exact=None: exact MILP up to here (T=12: <= ~2 s measured, k <= 6)
EXACT_HARD_LIMIT = 16   # exact=True refuses more: 2^16 groups, ~5e5 MILP variables
_TOL = 1e-9


@dataclass(frozen=True)
class Selection:
    """A selection of at most k task groups for T tasks.

    groups:    n_groups <= k tuples of sorted task indices; may overlap; sorted lexicographically.
               Every group serves at least one task (a group that serves nobody is dropped: it
               does not change J).
    serving:   (T,) int64, serving[t] = index into ``groups`` of the group where t scores best
               (the lowest index on ties).
    objective: J of ``groups`` (module docstring), in the method's own sense (mean affinity for
               "tag"/"cs", mean loss or error for "hoa").
    bound:     the best J that ANY selection of at most k groups out of all 2^T - 1 could reach:
               >= the optimum when maximising ("tag", "cs"), <= the optimum when minimising
               ("hoa"). Equal to ``objective`` when exact.
    exact:     True when ``objective`` is proven optimal (exact MILP solved to optimality, or the
               scalable search met its bound).
    method, seconds (wall time of select_groups), sense ("max" or "min").
    """

    groups: tuple[tuple[int, ...], ...]
    serving: np.ndarray
    objective: float
    bound: float
    exact: bool
    method: str
    seconds: float
    sense: str = "max"


def membership(selection: Selection, n_tasks: int) -> np.ndarray:
    """(T, n_groups) float64: 1.0 where task t is a member of group g (a row may hold several 1s)."""
    out = np.zeros((int(n_tasks), len(selection.groups)), dtype=np.float64)
    for g, group in enumerate(selection.groups):
        out[list(group), g] = 1.0
    return out


# -- objective ----------------------------------------------------------------------------------
def _gains(affinity: np.ndarray, method: str) -> tuple[np.ndarray, np.ndarray]:
    """(W, g1): W (T, T) gains with a zero diagonal, g1 (T,) singleton gains; all maximised."""
    sign = -1.0 if method == "hoa" else 1.0
    w = sign * affinity
    g1 = w.diagonal().copy() if method == "hoa" else np.full(len(w), SINGLETON_SCORE)
    np.fill_diagonal(w, 0.0)  # never used for |G| >= 2; zero so that members @ W.T needs no correction
    return w, g1


def group_scores(members: np.ndarray, w: np.ndarray, g1: np.ndarray) -> np.ndarray:
    """members (n, T) bool -> (n, T) float64 gains s(G, t) of each member; -inf for non-members.

    members @ W.T gives sum_{u in G} W[t, u] for every t at once (W has a zero diagonal).
    """
    members = np.asarray(members, dtype=bool)
    sizes = members.sum(axis=1)
    sums = members.astype(np.float64) @ w.T
    with np.errstate(divide="ignore", invalid="ignore"):
        s = sums / (sizes - 1.0)[:, None]
    s = np.where((sizes == 1)[:, None], g1[None, :], s)
    return np.where(members, s, -np.inf)


def _evaluate(members: np.ndarray, w: np.ndarray, g1: np.ndarray) -> float:
    """Mean over tasks of the best gain (-inf when a task is uncovered)."""
    if len(members) == 0:
        return -np.inf
    return float(group_scores(members, w, g1).max(axis=0).mean())


# -- validation ---------------------------------------------------------------------------------
def _check(affinity: np.ndarray, k: int, method: str) -> tuple[np.ndarray, int]:
    if method not in METHODS:
        raise ValueError(f"unknown selection method {method!r}: use one of {', '.join(METHODS)}")
    a = np.asarray(affinity, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] == 0:
        raise ValueError(f"affinity must be a non-empty square (T, T) matrix, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError("affinity has non-finite values (NaN or inf): fill or drop those tasks first")
    n = a.shape[0]
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"invalid k {k!r}: use an integer between 1 and the number of tasks ({n})")
    if k < 1 or k > n:
        raise ValueError(f"invalid k {k}: must be between 1 and the number of tasks ({n})")
    return a, int(k)


# -- exact choice among candidates: MILP --------------------------------------------------------
def _choose(members: np.ndarray, scores: np.ndarray, k: int, time_limit: float | None,
            ) -> tuple[np.ndarray | None, bool]:
    """Best <= k of the candidate groups: indices of the chosen rows, and whether proven optimal.

        max  (1/T) sum_{G, t in G} s(G, t) x[G, t]
        s.t. sum_{G ∋ t} x[G, t] = 1       for every task t     (each task served once)
             x[G, t] <= y[G]                for every t in G      (served only by a selected group)
             sum_G y[G] <= k,   y binary,   0 <= x <= 1

    x is continuous on purpose: once y is binary, the x-problem splits into one "pick the best
    selected group" simplex per task, whose optimum is a vertex, so x is integral anyway and HiGHS
    only branches on y. The per-pair linking rows (rather than sum_t x <= |G| y) keep the LP
    relaxation tight. mip_rel_gap = 0: the default 1e-4 would not give 4 exact decimals.
    """
    n_cand, n = members.shape
    g_idx, t_idx = np.nonzero(members)
    nnz = len(g_idx)
    c = np.concatenate([np.zeros(n_cand), -scores[g_idx, t_idx] / n])
    rows_cover = sparse.csr_array((np.ones(nnz), (t_idx, n_cand + np.arange(nnz))), shape=(n, n_cand + nnz))
    link_r = np.concatenate([np.arange(nnz), np.arange(nnz)])
    link_c = np.concatenate([n_cand + np.arange(nnz), g_idx])
    link_v = np.concatenate([np.ones(nnz), -np.ones(nnz)])
    rows_link = sparse.csr_array((link_v, (link_r, link_c)), shape=(nnz, n_cand + nnz))
    rows_budget = sparse.csr_array(np.concatenate([np.ones(n_cand), np.zeros(nnz)])[None, :])
    a_ub = sparse.vstack([rows_cover, rows_link, rows_budget]).tocsr()
    lo = np.concatenate([np.ones(n), np.full(nnz, -np.inf), [-np.inf]])
    hi = np.concatenate([np.ones(n), np.zeros(nnz), [float(k)]])
    integrality = np.concatenate([np.ones(n_cand), np.zeros(nnz)])
    options: dict[str, object] = {"mip_rel_gap": 0.0, "presolve": True}
    if time_limit is not None:
        options["time_limit"] = float(time_limit)
    res = milp(c, constraints=LinearConstraint(a_ub, lo, hi), integrality=integrality,
               bounds=Bounds(0.0, 1.0), options=options)
    if res.x is None:
        return None, False
    return np.flatnonzero(res.x[:n_cand] > 0.5), res.status == 0


def _prune_singletons(members: np.ndarray, w: np.ndarray, g1: np.ndarray) -> np.ndarray:
    """Drop singleton {t} when some pair {t, u} scores t at least as well: W[t, u] >= g1[t].

    Replacing {t} by {t, u} in any selection keeps the count <= k, does not lower t, and can only
    raise u (a max over more groups), so the optimum is unchanged. For TAG/CS this removes every
    -1e6 coefficient from the MILP (they would spoil its numerics next to values of order 0.01).
    """
    sizes = members.sum(axis=1)
    drop = np.zeros(len(members), dtype=bool)
    single = np.flatnonzero(sizes == 1)
    if len(w) > 1 and len(single):
        t = members[single].argmax(axis=1)
        off = w + np.diag(np.full(len(w), -np.inf))
        drop[single] = off[t].max(axis=1) >= g1[t]
    return members[~drop]


def _all_groups(n: int) -> np.ndarray:
    """(2^n - 1, n) bool: every non-empty subset of range(n), bit t of the row number + 1."""
    codes = np.arange(1, 2**n, dtype=np.int64)
    return ((codes[:, None] >> np.arange(n)) & 1).astype(bool)


# -- upper bound ----------------------------------------------------------------------------------
def _budget_bound(w: np.ndarray, g1: np.ndarray, k: int) -> float:
    """An upper bound on max J over ALL selections of <= k groups out of all 2^T - 1 groups.

    For a selection with p <= k groups, let S_1..S_p be the (non-empty) sets of tasks each group
    serves; they partition the tasks and |S_i| <= |G_i|. For any lam >= 0,

        T * J = sum_i sum_{t in S_i} (s(G_i, t) - lam / |S_i|) + lam * p
              <= sum_t (s(G(t), t) - lam / |G(t)|) + lam * k
              <= sum_t max_{m=1..T} (mu[t, m] - lam / m) + lam * k  =: T * f(lam)

    where G(t) is the group serving t and mu[t, m] is the largest s(G, t) over groups of size m,
    i.e. the mean of the m - 1 largest off-diagonal gains of row t (g1[t] for m = 1). So
    min_{lam >= 0} f(lam) bounds the optimum; lam = 0 is the per-task bound mean_t max_u W[t, u].
    f is convex and piecewise linear with slope (k - sum_t 1/m_t(lam)) / T: bisect on its sign.
    Any lam gives a valid bound, so an inexact minimiser only loosens it.
    """
    n = len(w)
    if n == 1:
        return float(g1[0])
    off = np.sort(w[~np.eye(n, dtype=bool)].reshape(n, n - 1), axis=1)[:, ::-1]
    mu = np.empty((n, n))
    mu[:, 0] = g1
    mu[:, 1:] = np.cumsum(off, axis=1) / np.arange(1, n)
    inv = 1.0 / np.arange(1, n + 1)

    def f(lam: float) -> tuple[float, float]:
        val = mu - lam * inv
        best = val.argmax(axis=1)
        return (float(val[np.arange(n), best].sum()) + lam * k) / n, k - float(inv[best].sum())

    # beyond lam_hi every task prefers m = T, where the slope is k - 1 >= 0
    diff = (mu[:, :-1] - mu[:, -1:]) / (inv[:-1] - inv[-1])
    lam_hi = max(float(diff.max()), 0.0) + 1.0
    lo, hi = 0.0, lam_hi
    best_val = min(f(lo)[0], f(hi)[0])
    if f(lo)[1] < 0:
        for _ in range(100):
            mid = 0.5 * (lo + hi)
            val, slope = f(mid)
            best_val = min(best_val, val)
            if slope < 0:
                lo = mid
            else:
                hi = mid
    return best_val


# -- scalable search ------------------------------------------------------------------------------
def _unique_rows(members: np.ndarray) -> np.ndarray:
    members = members[members.any(axis=1)]
    if len(members) == 0:
        return members
    packed = np.packbits(members, axis=1)
    _, first = np.unique(packed, axis=0, return_index=True)
    return members[np.sort(first)]


def _dendrogram_groups(sim: np.ndarray) -> list[np.ndarray]:
    """Every internal node of average/complete/weighted/single-linkage trees on 1 - similarity.

    A dendrogram holds the clusters of every cut (every number of clusters) at once, nested, in
    2T - 1 nodes; several linkages give differently shaped trees.
    """
    n = len(sim)
    d = sim.max() - sim
    np.fill_diagonal(d, 0.0)
    d = 0.5 * (d + d.T)
    cond = d[np.triu_indices(n, 1)]
    out = []
    for how in ("average", "complete", "weighted", "single"):
        z = linkage(cond, method=how)
        nodes = np.zeros((2 * n - 1, n), dtype=bool)
        nodes[np.arange(n), np.arange(n)] = True
        for i, (a, b) in enumerate(z[:, :2].astype(int)):
            nodes[n + i] = nodes[a] | nodes[b]
        out.append(nodes[n:])
    return out


def _greedy_groups(sym: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """From every seed task, grow a group by the task with the largest summed symmetrised gain to
    it (this maximises the group's mean pairwise gain one step at a time); keep the prefixes whose
    size is in ``sizes``."""
    n = len(sym)
    keep = np.zeros(n + 1, dtype=bool)
    keep[sizes[sizes <= n]] = True
    top = int(sizes.max(initial=2))
    out = []
    for seed in range(n):
        inside = np.zeros(n, dtype=bool)
        inside[seed] = True
        link = sym[seed].copy()
        for size in range(2, min(top, n) + 1):
            cand = np.where(inside, -np.inf, link)
            u = int(cand.argmax())
            inside[u] = True
            link += sym[u]
            if keep[size]:
                out.append(inside.copy())
    return np.array(out, dtype=bool).reshape(-1, n)


def _local_search(sel: np.ndarray, w: np.ndarray, g1: np.ndarray, k: int, max_moves: int = 10_000,
                  ) -> np.ndarray:
    """Best-improvement local search on a selection (m, T) bool: toggle one task in one group, or
    open a new pair group {t, partner(t)} while fewer than k groups are used.

    Vectorised per group: toggling u in group i changes its sums by +-W[:, u], so all T toggles of
    a group are one (T, T) array; the best gain of every task outside group i comes from keeping
    each task's two best groups.
    """
    n = len(w)
    wt = w.T
    partner = np.where(np.eye(n, dtype=bool), -np.inf, w).argmax(axis=1) if n > 1 else np.zeros(1, int)
    sel = sel.copy()
    eye = np.eye(n, dtype=bool)
    cur = _evaluate(sel, w, g1)
    for _ in range(max_moves):
        scores = group_scores(sel, w, g1)
        m = len(sel)
        order = np.argsort(-scores, axis=0)
        first, second = order[0], order[1] if m > 1 else order[0]
        best1 = scores[first, np.arange(n)]
        best2 = scores[second, np.arange(n)] if m > 1 else np.full(n, -np.inf)
        sums = sel.astype(np.float64) @ w.T
        sizes = sel.sum(axis=1)
        best_val, best_move = cur + _TOL * max(1.0, abs(cur)), None
        for i in range(m):
            excl = np.where(first == i, best2, best1)
            sign = np.where(sel[i], -1.0, 1.0)
            new_sum = sums[i][None, :] + sign[:, None] * wt
            new_mem = sel[i][None, :] ^ eye
            new_size = sizes[i] + sign
            with np.errstate(divide="ignore", invalid="ignore"):
                s = new_sum / (new_size - 1.0)[:, None]
            s = np.where((new_size == 1)[:, None], g1[None, :], s)
            s = np.where(new_mem, s, -np.inf)
            val = np.maximum(excl[None, :], s).mean(axis=1)
            u = int(val.argmax())
            if val[u] > best_val:
                best_val, best_move = float(val[u]), ("toggle", i, u)
        if m < k and n > 1:
            pair_t = np.maximum(best1, w[np.arange(n), partner])
            val = np.empty(n)
            for t in range(n):  # the pair also changes the partner's best
                p = partner[t]
                gain = max(best1[p], w[p, t]) - best1[p]
                val[t] = (pair_t[t] - best1[t] + gain + best1.sum()) / n
            t = int(val.argmax())
            if val[t] > best_val:
                best_val, best_move = float(val[t]), ("open", t, int(partner[t]))
        if best_move is None:
            break
        kind, a, b = best_move
        if kind == "toggle":
            sel[a, b] = ~sel[a, b]
        else:
            row = np.zeros(n, dtype=bool)
            row[[a, b]] = True
            sel = np.vstack([sel, row])
        sel = _drop_idle(sel, w, g1)
        cur = _evaluate(sel, w, g1)
    return sel


def _drop_idle(sel: np.ndarray, w: np.ndarray, g1: np.ndarray) -> np.ndarray:
    """Remove empty groups and groups that serve nobody (J unchanged; frees budget)."""
    sel = _unique_rows(sel)
    if len(sel) == 0:
        return sel
    scores = group_scores(sel, w, g1)
    serving = scores.argmax(axis=0)
    return sel[np.isin(np.arange(len(sel)), serving)]


def _perturb(sel: np.ndarray, rng: np.random.Generator, n_flips: int) -> np.ndarray:
    sel = sel.copy()
    for _ in range(n_flips):
        i, u = rng.integers(len(sel)), rng.integers(sel.shape[1])
        sel[i, u] = ~sel[i, u]
    covered = sel.any(axis=0)
    if not covered.all():  # put an uncovered task back into a random group
        for u in np.flatnonzero(~covered):
            sel[rng.integers(len(sel)), u] = True
    return sel


def _scalable(w: np.ndarray, g1: np.ndarray, k: int, seed: int, time_limit: float,
              restarts: int) -> tuple[np.ndarray, float]:
    """Candidate pool -> MILP over the pool -> local search + perturbed restarts -> MILP again."""
    start = time.perf_counter()
    n = len(w)
    rng = np.random.default_rng(seed)
    sym = 0.5 * (w + w.T)
    # a second, scale-free similarity: per-row ranks, so rows of very different scale count alike
    ranks = np.argsort(np.argsort(np.where(np.eye(n, dtype=bool), -np.inf, w), axis=1), axis=1) / max(n - 1, 1)
    rank_sym = 0.5 * (ranks + ranks.T)
    typical = math.ceil(n / k)
    sizes = np.unique(np.concatenate([np.arange(2, min(n, 12) + 1),
                                      np.round(np.geomspace(2, n, 12)).astype(int),
                                      np.arange(max(typical - 1, 2), typical + 3)]))
    sizes = sizes[(sizes >= 2) & (sizes <= n)]
    pool = [np.ones((1, n), dtype=bool), np.eye(n, dtype=bool)]
    if n > 2:
        pool += _dendrogram_groups(sym) + _dendrogram_groups(rank_sym)
        pool += [_greedy_groups(sym, sizes), _greedy_groups(rank_sym, sizes)]
    members = _prune_singletons(_unique_rows(np.vstack(pool)), w, g1)

    def solve(cands: np.ndarray) -> np.ndarray:
        left = max(time_limit - (time.perf_counter() - start), 0.5)
        chosen, _ = _choose(cands, group_scores(cands, w, g1), k, time_limit=left)
        return cands[chosen] if chosen is not None and len(chosen) else np.ones((1, n), dtype=bool)

    best = _drop_idle(solve(members), w, g1)
    best_val = _evaluate(best, w, g1)
    for _ in range(3):  # rounds: improve, widen the pool, recombine
        found = [_local_search(best, w, g1, k)]
        for _ in range(restarts):
            if time.perf_counter() - start > 0.6 * time_limit:
                break
            flips = int(rng.integers(1, max(2, n // 5) + 1))
            found.append(_local_search(_perturb(best, rng, flips), w, g1, k))
        new = _unique_rows(np.vstack([members, *found]))
        val_found = [(_evaluate(s, w, g1), i) for i, s in enumerate(found)]
        v, i = max(val_found)
        cand = found[i]
        if len(new) > len(members):
            members = new
            cand2 = _drop_idle(solve(members), w, g1)
            if _evaluate(cand2, w, g1) > v:
                cand, v = cand2, _evaluate(cand2, w, g1)
        if v <= best_val + _TOL * max(1.0, abs(best_val)):
            break
        best, best_val = _drop_idle(cand, w, g1), v
        if time.perf_counter() - start > time_limit:
            break
    return best, best_val


# -- public entry point ---------------------------------------------------------------------------
def select_groups(
    affinity: np.ndarray,
    k: int,
    *,
    method: str = "tag",
    exact: bool | None = None,
    seed: int = 0,
    time_limit: float = 20.0,
    restarts: int = 4,
) -> Selection:
    """Choose at most k task groups maximising TAG's network-selection objective J (module docstring).

    affinity: (T, T), affinity[t, u] = value of task t when grouped with u (source u -> target t).
    k: the budget of networks (1 <= k <= T). method: "tag", "cs" (maximise) or "hoa" (minimise).
    exact: True = MILP over all 2^T - 1 groups (T <= 16); False = scalable search; None = exact
    when T <= EXACT_MAX_TASKS. seed: the scalable search's random restarts. time_limit (seconds):
    a cap on each MILP of the scalable search. restarts: perturbed local-search restarts per round.

    The bound is min over lam >= 0 of the Lagrangian budget relaxation in _budget_bound: it bounds
    the optimum over ALL selections of <= k of the 2^T - 1 groups (not only the candidates).
    Raises ValueError (one line) on a bad matrix, k or method.
    """
    start = time.perf_counter()
    a, k = _check(affinity, k, method)
    n = len(a)
    sense = "min" if method == "hoa" else "max"
    sign = -1.0 if sense == "min" else 1.0
    w, g1 = _gains(a, method)
    if exact is None:
        exact = n <= EXACT_MAX_TASKS
    if exact and n > EXACT_HARD_LIMIT:
        raise ValueError(f"exact selection enumerates 2^T - 1 groups; T={n} is too many "
                         f"(at most {EXACT_HARD_LIMIT}): use exact=False")
    proven = False
    if exact:
        members = _prune_singletons(_all_groups(n), w, g1)
        chosen, proven = _choose(members, group_scores(members, w, g1), k, time_limit=None)
        if chosen is None:  # cannot happen: the full group is always feasible
            raise RuntimeError("the exact MILP found no solution")
        sel = _drop_idle(members[chosen], w, g1)
        value = _evaluate(sel, w, g1)
        bound = value if proven else _budget_bound(w, g1, k)
    else:
        sel, value = _scalable(w, g1, k, seed, float(time_limit), int(restarts))
        bound = max(_budget_bound(w, g1, k), value)  # value <= optimum <= bound; max() guards rounding
        proven = value >= bound - _TOL * max(1.0, abs(bound))
        if proven:
            bound = value
    groups = sorted(tuple(int(t) for t in np.flatnonzero(row)) for row in sel)
    rows = np.zeros((len(groups), n), dtype=bool)
    for g, group in enumerate(groups):
        rows[g, list(group)] = True
    serving = group_scores(rows, w, g1).argmax(axis=0).astype(np.int64)
    return Selection(groups=tuple(groups), serving=serving, objective=sign * value,
                     bound=sign * bound, exact=bool(proven), method=method,
                     seconds=time.perf_counter() - start, sense=sense)
