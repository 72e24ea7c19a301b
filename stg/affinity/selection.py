"""TAG network selection (Fifty et al. 2021): at most k task groups from an inter-task affinity matrix.

Notation: T tasks, A (T, T) float, A[t, u] = the value used when scoring task t inside a group that
also contains u (TAG: the lookahead affinity of source u onto target t, rows are recipients; CS: the
gradient cosine, symmetric; HOA: the validation loss or error of t when trained with u). The
objective is the one of the official notebooks ``tag/network_selection/{TAG,HOA}_network_selection``:

    s(G, t)   = (1 / (|G| - 1)) * sum_{u in G, u != t} A[t, u]    for t in G, |G| >= 2
    s({t}, t) = -1e6        ("tag", "cs": a task is never served alone when avoidable)
    s({t}, t) = A[t, t]     ("hoa": the single-task loss or error)

    J(S) = (1 / T) * sum_t  best_{G in S, t in G} s(G, t)

over selections S of at most k distinct non-empty groups that cover every task. Groups may overlap;
each task is served by the selected group where it scores best. best = max and J is maximised for
"tag" and "cs"; best = min and J is minimised for "hoa" (CelebA's HOA values are accuracies: pass
100 - accuracy, as the notebook does). The diagonal is used only by "hoa" singletons.

Internally everything maximises gains W = A ("tag", "cs") or W = -A ("hoa"), diagonal zeroed, with
singleton gains g1 = -1e6 or -diag(A).

Served-set reformulation (what both solvers optimise). In a selection, the tasks each group serves
partition the tasks. Conversely, a block S of served tasks is best hosted by G = S + H, where the
helpers H (members served elsewhere) are free to choose:

    v(S) = max_{G >= S} sum_{t in S} s(G, t) = max_{r >= 0} (P(S) + top_r(c_S)) / (|S| + r - 1)
    P(S) = sum_{t, u in S} W[t, u],   c_S(h) = sum_{t in S} W[t, h]   (h not in S)

(r = 0 with |S| = 1 is the singleton g1[t]): for a fixed number r of helpers the best ones are the r
largest c_S(h). Hence max J = (1/T) * max over partitions of the tasks into at most k blocks of
sum v(block): T * J of a selection is at most the value of the partition into its served blocks (v
maximises over hosts), and the hosts of a partition are a selection whose T * J is at least the
partition's value (a task may score even better in another host than in its own block's).

* exact (T <= EXACT_MAX_TASKS by default): v of all 2^T - 1 blocks, then a dynamic programme over
  subsets for the best partition into <= k blocks (_exact_partition, (3^T - 1) / 2 pairs per
  layer). Same optimum as the official exhaustive search over combinations of groups, which costs
  C(2^T - 1, k) (2.2e7 at T = 9, k = 3).
* scalable: blocks from dendrograms of the symmetrised gains, greedy growth and a local search over
  partitions; the same MILP picks the best partition among the blocks found, and an upper bound on
  the optimum over ALL 2^T - 1 groups is reported (_budget_bound).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.optimize import Bounds, LinearConstraint, milp

METHODS = ("tag", "cs", "hoa")
SINGLETON_SCORE = -1e6  # TAG / CS notebooks: s({t}, t)
EXACT_MAX_TASKS = 14    # exact=None: exact up to here (T=14: <= 0.5 s, ~60 MB, measured on 2 busy cores)
EXACT_HARD_LIMIT = 15   # exact=True refuses more (T=15: <= 1.5 s, ~200 MB; T=16 would need ~600 MB)
_REL_TOL = 1e-9


@dataclass(frozen=True)
class Selection:
    """At most k task groups for T tasks.

    groups:    n_groups <= k tuples of sorted task indices, sorted; they may overlap. Every group
               serves at least one task (one that serves nobody is dropped: J does not change).
    serving:   (T,) int64, index into ``groups`` of the group where each task scores best (the lowest
               index on ties).
    objective: J(groups) (module docstring) in the method's own sense: mean affinity ("tag", "cs",
               maximised) or mean loss / error ("hoa", minimised).
    bound:     a bound on the best J that ANY selection of at most k of the 2^T - 1 groups reaches:
               >= that optimum when maximising, <= it when minimising ("hoa"). It equals
               ``objective`` when exact.
    exact:     True when ``objective`` is proven optimal (the exact solver, or the scalable search
               met its bound).
    method:    "tag", "cs" or "hoa"; sense: "max" or "min"; seconds: wall time of select_groups.
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
    """(T, n_groups) float64: 1.0 where task t is a member of group g (several 1s when it is in several)."""
    out = np.zeros((int(n_tasks), len(selection.groups)), dtype=np.float64)
    for g, group in enumerate(selection.groups):
        out[list(group), g] = 1.0
    return out


# -- objective ----------------------------------------------------------------------------------
def _gains(affinity: np.ndarray, method: str) -> tuple[np.ndarray, np.ndarray]:
    """(W, g1): W (T, T) gains with a zero diagonal, g1 (T,) singleton gains; both maximised."""
    sign = -1.0 if method == "hoa" else 1.0
    w = sign * affinity
    g1 = w.diagonal().copy() if method == "hoa" else np.full(len(w), SINGLETON_SCORE)
    np.fill_diagonal(w, 0.0)  # zero so that sums over a group need no self-correction
    return w, g1


def group_scores(members: np.ndarray, w: np.ndarray, g1: np.ndarray) -> np.ndarray:
    """members (n, T) bool -> (n, T) float64: s(G, t) for members, -inf for non-members.

    (members @ W.T)[g, t] = sum_{u in G} W[t, u] for every t at once (W has a zero diagonal).
    """
    members = np.asarray(members, dtype=bool)
    sizes = members.sum(axis=1)
    sums = members.astype(np.float64) @ w.T
    with np.errstate(divide="ignore", invalid="ignore"):
        s = sums / (sizes - 1.0)[:, None]
    s = np.where((sizes == 1)[:, None], g1[None, :], s)
    return np.where(members, s, -np.inf)


def _evaluate(groups: np.ndarray, w: np.ndarray, g1: np.ndarray) -> float:
    """J (maximised sense) of a selection (n, T) bool; -inf when a task is uncovered."""
    if len(groups) == 0:
        return -np.inf
    return float(group_scores(groups, w, g1).max(axis=0).mean())


def served_values(blocks: np.ndarray, w: np.ndarray, g1: np.ndarray, *, hosts: bool = False,
                  ) -> tuple[np.ndarray, np.ndarray | None]:
    """blocks (n, T) bool, non-empty -> (v (n,) float64, host groups (n, T) bool or None): the best
    value of each block as a set of served tasks, and (``hosts=True``) a host group reaching it
    (module docstring: v(S)). Ties between numbers of helpers keep the fewest.

    Sorting the values (not argsorting them: 10x slower, stable argsort) is the only superlinear
    step; the helpers themselves are found only when hosts are asked for.
    """
    blocks = np.asarray(blocks, dtype=bool)
    c = blocks.astype(np.float64) @ w                      # c[S, h] = sum_{t in S} W[t, h]
    return _values(blocks, c, np.einsum("ij,ij->i", c, blocks), g1, hosts=hosts)


def _values(blocks: np.ndarray, c: np.ndarray, inner: np.ndarray, g1: np.ndarray, *,
            hosts: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """served_values from c (n, T), c[S, h] = sum_{t in S} W[t, h], and inner (n,) = P(S)."""
    n_sets, n = blocks.shape
    size = blocks.sum(axis=1)
    outside = np.where(blocks, -np.inf, c)
    cum = np.cumsum(np.sort(outside, axis=1)[:, ::-1], axis=1)  # -inf once the outsiders run out
    with_helpers = (inner[:, None] + cum) / (size[:, None] + np.arange(n))  # r = 1..T helpers
    best_r = with_helpers.argmax(axis=1)
    best_with = with_helpers[np.arange(n_sets), best_r]
    alone = g1[blocks.argmax(axis=1)].copy()
    pairs = size >= 2
    alone[pairs] = inner[pairs] / (size[pairs] - 1.0)
    use = best_with > alone                                # ties: no helpers
    values = np.where(use, best_with, alone)
    if not hosts:
        return values, None
    out = blocks.copy()
    for i in np.flatnonzero(use):
        order = np.argsort(-outside[i], kind="stable")
        out[i, order[: best_r[i] + 1]] = True
    return values, out


# -- validation ---------------------------------------------------------------------------------
def _check(affinity: np.ndarray, k: int, method: str) -> tuple[np.ndarray, int]:
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"unknown selection method {method!r}: use one of {', '.join(METHODS)}")
    a = np.asarray(affinity, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] == 0:
        raise ValueError(f"affinity must be a non-empty square (T, T) matrix, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError("affinity has non-finite values (NaN or inf): fill them or drop those tasks first")
    n = a.shape[0]
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"invalid k {k!r}: use an integer between 1 and the number of tasks ({n})")
    if k < 1 or k > n:
        raise ValueError(f"invalid k {k}: must be between 1 and the number of tasks ({n})")
    return a, int(k)


# -- best partition among candidate blocks: MILP --------------------------------------------------
def _partition(blocks: np.ndarray, values: np.ndarray, k: int, time_limit: float | None,
               ) -> tuple[np.ndarray | None, bool]:
    """Rows of ``blocks`` forming the best partition into <= k blocks, and whether proven optimal.

        max (1/T) sum_S v(S) y_S   s.t.   sum_{S ∋ t} y_S = 1  for every task t,   sum_S y_S <= k,
        y binary.

    Set partitioning with T + 1 rows. presolve is off: on 2^14 columns HiGHS's presolve alone took
    4 s of a 6.5 s solve and removed nothing. mip_rel_gap = 0: the default 1e-4 is coarser than the
    differences between good partitions. Used by the scalable search only: on all 2^T - 1 blocks its
    time depends wildly on the values (0.3 s to 70 s at T = 14), the DP of _exact_partition's not.
    """
    n_sets, n = blocks.shape
    a = sparse.vstack([sparse.csr_array(blocks.T.astype(np.float64)),
                       sparse.csr_array(np.ones((1, n_sets)))]).tocsr()
    lo = np.concatenate([np.ones(n), [0.0]])
    hi = np.concatenate([np.ones(n), [float(k)]])
    options: dict[str, object] = {"mip_rel_gap": 0.0, "presolve": False}
    if time_limit is not None:
        options["time_limit"] = float(time_limit)
    res = milp(-values / n, constraints=LinearConstraint(a, lo, hi), integrality=np.ones(n_sets),
               bounds=Bounds(0.0, 1.0), options=options)
    if res.x is None:
        return None, False
    return np.flatnonzero(res.x > 0.5), res.status == 0


def _all_blocks(n: int) -> np.ndarray:
    """(2^n - 1, n) bool: every non-empty subset of range(n); row i is the subset with bit mask i + 1."""
    codes = np.arange(1, 2**n, dtype=np.int64)
    return ((codes[:, None] >> np.arange(n)) & 1).astype(bool)


def _split_pairs(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (S, R) with S non-empty, S & R = 0 and the lowest task of M = S | R in S, as bit masks,
    grouped by M (ascending): (S, R, start of each M's run). (3^n - 1) / 2 pairs.

    Built one task at a time: a new highest task t joins S or R of every earlier pair (its lowest
    task is unchanged), or starts the pair ({t}, {}). uint16 masks (n <= 16) let numpy's stable
    sort use radix sort.
    """
    s = np.zeros(0, dtype=np.uint16)
    r = np.zeros(0, dtype=np.uint16)
    for t in range(n):
        bit = np.uint16(1 << t)
        s = np.concatenate([s, s | bit, s, np.array([bit], dtype=np.uint16)])
        r = np.concatenate([r, r, r | bit, np.zeros(1, dtype=np.uint16)])
    order = np.argsort(s | r, kind="stable")
    s, r = s[order], r[order]
    m = s | r
    return s, r, np.flatnonzero(np.r_[True, m[1:] != m[:-1]])


def _exact_partition(values: np.ndarray, n: int, k: int) -> list[int]:
    """Best partition of all n tasks into <= k blocks, values[mask - 1] = v(block with that bit mask).
    Returns the blocks' bit masks.

        f_1(M) = v(M),    f_j(M) = max_{S <= M, low(M) in S} v(S) + f_{j-1}(M - S),    f_j({}) = 0

    f_j(M) is the best split of M into <= j blocks (S = M takes one block; requiring the lowest
    task of M in S counts each split once). One layer is a gather, an add and a max.reduceat over
    the (3^n - 1) / 2 pairs of _split_pairs; the layers stop early once f stops changing (more
    blocks no longer help). Cost is independent of the values (the MILP over all 2^n - 1 blocks
    took 0.3 s to 70 s at n = 14 depending on them; this takes ~0.4 s).
    """
    s, r, starts = _split_pairs(n)
    v = np.concatenate([[0.0], values])
    base = v[s]
    layers = [v.copy()]
    for _ in range(2, k + 1):
        f = np.concatenate([[0.0], np.maximum.reduceat(base + layers[-1][r], starts)])
        if np.array_equal(f, layers[-1]):
            break
        layers.append(f)
    blocks, mask, j = [], (1 << n) - 1, len(layers)
    while mask:
        if j == 1:
            blocks.append(mask)
            break
        lo, hi = starts[mask - 1], (starts[mask] if mask < len(starts) else len(s))
        best = lo + int(np.argmax(base[lo:hi] + layers[j - 2][r[lo:hi]]))
        blocks.append(int(s[best]))
        mask, j = int(r[best]), j - 1
    return blocks


def _selection_from_blocks(blocks: np.ndarray, w: np.ndarray, g1: np.ndarray) -> np.ndarray:
    """Hosts of a partition, without duplicates or groups that serve nobody (J unchanged)."""
    _, hosts = served_values(blocks, w, g1, hosts=True)
    return _drop_idle(hosts, w, g1)


def _drop_idle(groups: np.ndarray, w: np.ndarray, g1: np.ndarray) -> np.ndarray:
    groups = _unique_rows(groups)
    serving = group_scores(groups, w, g1).argmax(axis=0)
    return groups[np.isin(np.arange(len(groups)), serving)]


def _unique_rows(rows: np.ndarray) -> np.ndarray:
    rows = rows[rows.any(axis=1)]
    if len(rows) == 0:
        return rows
    _, first = np.unique(np.packbits(rows, axis=1), axis=0, return_index=True)
    return rows[np.sort(first)]


# -- upper bound ----------------------------------------------------------------------------------
def _budget_bound(w: np.ndarray, g1: np.ndarray, k: int) -> float:
    """Upper bound on max J over ALL selections of <= k groups among all 2^T - 1 (maximised sense).

    Take any selection with p <= k groups and its served blocks S_1..S_p (a partition of the tasks;
    S_i is served by G_i, |S_i| <= |G_i|). For every lam >= 0,

        T * J = sum_i sum_{t in S_i} (s(G_i, t) - lam / |S_i|) + lam * p
              <= sum_t (s(G(t), t) - lam / |G(t)|) + lam * k            (1/|S_i| >= 1/|G_i|, p <= k)
              <= sum_t max_{m = 1..T} (mu[t, m] - lam / m) + lam * k  =: T * f(lam)

    with G(t) the group serving t and mu[t, m] the largest s(G, t) over groups of size m: the mean of
    the m - 1 largest off-diagonal gains in row t (g1[t] for m = 1). So min_{lam >= 0} f(lam) bounds
    the optimum; f(0) = mean_t max(g1[t], max_u W[t, u]) is the budget-free per-task bound. f is
    convex, piecewise linear, with slope (k - sum_t 1 / m_t(lam)) / T: bisect on its sign. Any lam
    gives a valid bound, so an inexact minimiser only loosens it.
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

    # beyond lam_hi every task prefers m = T, where the slope is k - 1 >= 0: the minimum is below
    lam_hi = max(float(((mu[:, :-1] - mu[:, -1:]) / (inv[:-1] - inv[-1])).max()), 0.0) + 1.0
    lo, hi = 0.0, lam_hi
    best_val = min(f(lo)[0], f(hi)[0])
    if f(lo)[1] < 0:
        for _ in range(100):
            mid = 0.5 * (lo + hi)
            val, slope = f(mid)
            best_val = min(best_val, val)
            lo, hi = (mid, hi) if slope < 0 else (lo, mid)
    return best_val


# -- scalable search ------------------------------------------------------------------------------
def _dendrogram_blocks(sim: np.ndarray, k: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Every internal node of average / complete / weighted / single-linkage trees on max(sim) - sim,
    and the cut into k clusters of the first three (starting partitions, labels in 0..k-1).

    A dendrogram holds the clusters of every cut (every number of clusters) at once, nested, in
    2T - 1 nodes; the linkages give differently shaped trees.
    """
    n = len(sim)
    d = sim.max() - sim
    d = 0.5 * (d + d.T)
    cond = d[np.triu_indices(n, 1)]
    nodes_out, cuts = [], []
    for how in ("average", "complete", "weighted", "single"):
        z = linkage(cond, method=how)
        nodes = np.zeros((2 * n - 1, n), dtype=bool)
        nodes[np.arange(n), np.arange(n)] = True
        for i, (a, b) in enumerate(z[:, :2].astype(int)):
            nodes[n + i] = nodes[a] | nodes[b]
        nodes_out.append(nodes[n:])
        if how != "single":  # single linkage chains: its cut is one giant block, a poor start
            cuts.append(fcluster(z, t=k, criterion="maxclust") - 1)
    return nodes_out, cuts


def _greedy_blocks(sym: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """From every seed task grow a block by the task with the largest summed symmetrised gain to it
    (one step of maximising the block's mean pairwise gain); keep the prefixes of the given sizes."""
    n = len(sym)
    keep = np.zeros(n + 1, dtype=bool)
    keep[sizes] = True
    out = []
    for seed in range(n):
        inside = np.zeros(n, dtype=bool)
        inside[seed] = True
        link = sym[seed].copy()
        for size in range(2, int(sizes.max()) + 1):
            u = int(np.where(inside, -np.inf, link).argmax())
            inside[u] = True
            link += sym[u]
            if keep[size]:
                out.append(inside.copy())
    return np.array(out, dtype=bool).reshape(-1, n)


def _local_search(labels: np.ndarray, w: np.ndarray, g1: np.ndarray, k: int,
                  max_moves: int = 100_000) -> np.ndarray:
    """Best-improvement local search over partitions into <= k blocks, block values v (served_values).

    labels (T,) in 0..k-1 (a slot may be empty). Moves: one task to another block or to an empty
    slot (a new block), or merging two blocks (frees budget for a later split). The values the moves
    need, v(B_j + u) for every slot j and task u, v(B(u) - u) for every task and v(B_i + B_j), are
    cached; a move recomputes only those of the two blocks it changed (about 3T + 2k blocks, one
    served_values call).
    """
    n = len(w)
    labels = labels.copy()
    eye = np.eye(n, dtype=bool)
    value = np.zeros(k)                  # v(B_j), 0 for an empty slot
    add = np.full((k, n), -np.inf)       # v(B_j + u) for u outside B_j
    rem = np.zeros(n)                    # v(B(u) - u), 0 when u is alone
    merge = np.full((k, k), -np.inf)     # v(B_i + B_j) for i != j, both non-empty

    def refresh(changed: list[int]) -> None:
        # c and P of every block a move needs, by sums of rows of W: no BLAS call, whose threads
        # cost more than these small products on a busy 2-core machine
        member = labels[None, :] == np.arange(k)[:, None]
        col = np.stack([w[m].sum(axis=0) for m in member])      # c_{B_j}
        inner = np.einsum("ij,ij->i", col, member)              # P(B_j)
        rows, cs, ps, parts = [], [], [], []
        for j in changed:
            b, cb, pb = member[j], col[j], inner[j]
            rb = w[:, b].sum(axis=1)                            # sum_{t in B} W[u, t]
            inside = np.flatnonzero(b)
            others = [i for i in range(k) if i != j and b.any() and member[i].any()]
            rows += [b[None, :], b[None, :] | eye, b[None, :] & ~eye[inside], member[others] | b]
            cs += [cb[None, :], cb[None, :] + w, cb[None, :] - w[inside], col[others] + cb]
            ps += [[pb], pb + cb + rb, pb - cb[inside] - rb[inside],
                   pb + inner[others] + member[others] @ cb + col[others] @ b]
            parts.append((j, inside, others))
        rows, cs, ps = np.vstack(rows), np.vstack(cs), np.concatenate(ps)
        vals = np.zeros(len(rows))
        nonempty = rows.any(axis=1)
        if nonempty.any():
            vals[nonempty] = _values(rows[nonempty], cs[nonempty], ps[nonempty], g1)[0]
        pos = 0
        for j, inside, others in parts:
            value[j] = vals[pos]
            add[j] = np.where(member[j], -np.inf, vals[pos + 1:pos + 1 + n])
            rem[inside] = vals[pos + 1 + n:pos + 1 + n + len(inside)]
            merge[j, :] = merge[:, j] = -np.inf
            merge[j, others] = merge[others, j] = vals[pos + 1 + n + len(inside):
                                                      pos + 1 + n + len(inside) + len(others)]
            pos += 1 + n + len(inside) + len(others)

    refresh(list(range(k)))
    for _ in range(max_moves):
        # moving u to slot j changes its own block by rem - v(B(u)) and slot j by add - v(B_j);
        # moving a lone task to an empty slot scores 0, never an improvement
        move = (rem - value[labels])[None, :] + (add - value[:, None])
        j, u = np.unravel_index(int(move.argmax()), move.shape)
        joint = merge - value[:, None] - value[None, :]
        i2, j2 = np.unravel_index(int(joint.argmax()), joint.shape)
        tol = _REL_TOL * max(1.0, float(np.abs(value).sum()))
        if max(move[j, u], joint[i2, j2]) <= tol:
            break
        if move[j, u] >= joint[i2, j2]:
            changed = [int(labels[u]), int(j)]
            labels[u] = j
        else:
            labels[labels == j2] = i2
            changed = [int(i2), int(j2)]
        refresh(changed)
    return labels


def _labels_of(blocks: np.ndarray, n: int) -> np.ndarray:
    labels = np.zeros(n, dtype=np.int64)
    for j, row in enumerate(blocks):
        labels[row] = j
    return labels


def _scalable(w: np.ndarray, g1: np.ndarray, k: int, seed: int, time_limit: float, restarts: int,
              ) -> np.ndarray:
    """The scalable search; returns the blocks (p <= k, T) bool of the best partition found.

    1. candidate blocks: every node of 8 dendrograms (4 linkages x 2 similarities: the symmetrised
       gains and their per-row ranks, which weigh rows of very different scale alike, as CelebA's
       TAG rows are), greedy growth from every task, all tasks, every single task;
    2. local search (_local_search) from each dendrogram's cut into k clusters, then from
       ``restarts`` perturbed copies of the best partition (1 to T/5 tasks moved to random slots);
    3. the MILP of _partition over all candidate blocks plus every block the local searches
       visited last, which recombines blocks of different partitions; a local search polishes it.
    Everything but the MILP is deterministic given ``seed``; the MILP is too unless it hits
    ``time_limit`` (then HiGHS's best incumbent is used, and the result can depend on speed).
    """
    n = len(w)
    rng = np.random.default_rng(seed)
    sym = 0.5 * (w + w.T)
    ranks = np.argsort(np.argsort(np.where(np.eye(n, dtype=bool), -np.inf, w), axis=1), axis=1)
    rank_sym = 0.5 * (ranks + ranks.T) / max(n - 1, 1)
    typical = math.ceil(n / k)
    sizes = np.unique(np.concatenate([np.arange(2, 13), np.round(np.geomspace(2, n, 12)).astype(int),
                                      np.arange(typical - 1, typical + 3)]))
    sizes = sizes[(sizes >= 2) & (sizes <= n)]
    pool = [np.ones((1, n), dtype=bool), np.eye(n, dtype=bool)]
    starts = [np.zeros(n, dtype=np.int64)]  # all tasks in one block: replaced by the cuts when n > 2
    if n > 2:
        starts = []
        for sim in (sym, rank_sym):
            nodes, cuts = _dendrogram_blocks(sim, k)
            pool += nodes
            starts += cuts
        pool += [_greedy_blocks(sym, sizes), _greedy_blocks(rank_sym, sizes)]

    def worth(lab: np.ndarray) -> float:
        return float(served_values(_blocks_of(lab), w, g1)[0].sum())

    found = [_local_search(lab, w, g1, k) for lab in starts]
    best = max(found, key=worth)
    for _ in range(restarts):
        lab = best.copy()
        moved = rng.choice(n, size=min(n, int(rng.integers(1, max(2, n // 5) + 1))), replace=False)
        lab[moved] = rng.integers(0, k, size=len(moved))
        found.append(_local_search(lab, w, g1, k))
        best = max([best, found[-1]], key=worth)
    blocks = _unique_rows(np.vstack(pool + [_blocks_of(lab) for lab in found]))
    if 2 <= k <= 3 or n <= 24:
        # a block is only usable next to blocks that partition the rest: with k = 2 that is its
        # complement, and complements are what the small-k searches miss (cheap for small T)
        blocks = _unique_rows(np.vstack([blocks, ~blocks]))
    chosen, _ = _partition(blocks, served_values(blocks, w, g1)[0], k, time_limit=time_limit)
    if chosen is not None:
        best = max([best, _local_search(_labels_of(blocks[chosen], n), w, g1, k)], key=worth)
    return _blocks_of(best)


def _blocks_of(labels: np.ndarray) -> np.ndarray:
    """(p, T) bool rows of the non-empty blocks of a labelling."""
    return labels[None, :] == np.unique(labels)[:, None]


# -- public entry point ---------------------------------------------------------------------------
def select_groups(
    affinity: np.ndarray,
    k: int,
    *,
    method: str = "tag",
    exact: bool | None = None,
    seed: int = 0,
    time_limit: float = 2.0,
    restarts: int = 8,
) -> Selection:
    """Choose at most k (possibly overlapping) task groups optimising TAG's network-selection J.

    affinity: (T, T) float, affinity[t, u] = value of target t when grouped with source u (module
      docstring); k: number of networks, 1 <= k <= T; method: "tag" or "cs" (maximise J, singletons
      score -1e6) or "hoa" (minimise J, singletons score affinity[t, t]).
    exact: True = the exact subset DP over all 2^T - 1 blocks (T <= EXACT_HARD_LIMIT); False = the
      scalable search; None = exact when T <= EXACT_MAX_TASKS.
    seed, restarts: the scalable search's perturbed local-search restarts. time_limit: seconds for
      its recombining MILP (see _scalable); the exact solver has no time limit.

    ``bound`` (scalable search) is the Lagrangian budget bound of _budget_bound: it bounds the
    optimum over ALL selections of <= k groups among all 2^T - 1, not only over the candidates.
    Raises ValueError (one line) on a bad matrix, k, method, time_limit or restarts.
    """
    start = time.perf_counter()
    a, k = _check(affinity, k, method)
    if not (isinstance(time_limit, (int, float)) and math.isfinite(time_limit) and time_limit > 0):
        raise ValueError(f"invalid time_limit {time_limit!r}: use a positive number of seconds")
    if isinstance(restarts, bool) or not isinstance(restarts, (int, np.integer)) or restarts < 0:
        raise ValueError(f"invalid restarts {restarts!r}: use an integer >= 0")
    n = len(a)
    sense = "min" if method == "hoa" else "max"
    sign = -1.0 if sense == "min" else 1.0
    w, g1 = _gains(a, method)
    if exact is None:
        exact = n <= EXACT_MAX_TASKS
    if exact and n > EXACT_HARD_LIMIT:
        raise ValueError(f"exact selection enumerates all 2^T - 1 groups and T={n} is too many "
                         f"(at most {EXACT_HARD_LIMIT}): use exact=False")
    if exact:
        masks = _exact_partition(served_values(_all_blocks(n), w, g1)[0], n, k)
        blocks = ((np.array(masks, dtype=np.int64)[:, None] >> np.arange(n)) & 1).astype(bool)
        proven = True
    else:
        blocks = _scalable(w, g1, k, int(seed), float(time_limit), int(restarts))
        proven = False
    groups = _selection_from_blocks(blocks, w, g1)
    value = _evaluate(groups, w, g1)
    if proven:
        bound = value
    else:
        bound = max(_budget_bound(w, g1, k), value)  # value <= optimum <= bound; max() absorbs rounding
        proven = value >= bound - _REL_TOL * max(1.0, abs(bound))
        bound = value if proven else bound
    ordered = sorted(tuple(int(t) for t in np.flatnonzero(row)) for row in groups)
    rows = np.zeros((len(ordered), n), dtype=bool)
    for g, group in enumerate(ordered):
        rows[g, list(group)] = True
    serving = group_scores(rows, w, g1).argmax(axis=0).astype(np.int64)
    return Selection(groups=tuple(ordered), serving=serving, objective=sign * value + 0.0,
                     bound=sign * bound + 0.0,
                     exact=bool(proven), method=method, seconds=time.perf_counter() - start, sense=sense)
