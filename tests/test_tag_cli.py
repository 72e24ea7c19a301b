"""TAG from the command line: affinities recorded in the data-map run, then `stg group --method tag`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from stg.affinity.files import affinity_epochs, load_affinity_epoch
from stg.runs.rundir import RunDir
from test_cli import assert_one_line_error, stg


def test_datamap_records_affinities_and_tag_groups_them(tmp_path: Path) -> None:
    out = tmp_path / "run"
    stg("datamap", "--dataset", "fashion-sample", "--tasks", "composite", "--limit", "300", "--epochs", "2",
        "--batch-size", "32", "--affinity", "tag,cs", "--affinity-every", "3", "--out", str(out))
    meta = RunDir(out).read()
    assert meta["affinity"] == {"methods": ["tag", "cs"], "every": 3}
    steps = -(-meta["n_train"] // 32)
    for method in ("tag", "cs"):
        assert affinity_epochs(out, method) == [1, 2]
        a = load_affinity_epoch(out, method, 2)
        assert a.shape == (13, 13) and np.isfinite(a).all()
        # probes at global steps 0, 3, 6, ...: the history counts them per epoch
        want = [sum(1 for s in range((e - 1) * steps, e * steps) if s % 3 == 0) for e in (1, 2)]
        assert [h[f"{method}_probes"] for h in meta["history"]] == want
    with np.load(out / "affinity" / "cs" / "epoch_001.npz") as z:
        cs = z["affinity"]
    np.testing.assert_allclose(cs, cs.T, atol=1e-6)  # a cosine is symmetric

    printed = stg("group", str(out), "--method", "tag", "--k", "3").stdout
    assert "tag-k3: tag" in printed and "objective" in printed and "vs garment-type" in printed
    g = json.loads((out / "groupings" / "tag-k3.json").read_text())
    w = np.asarray(g["membership"])
    assert w.shape[0] == 13 and 1 <= w.shape[1] <= 3 and set(np.unique(w)) <= {0.0, 1.0}
    assert all(w[t, g["serving"][t]] == 1 for t in range(13)), "every task belongs to the group serving it"
    assert g["bound"] >= g["objective"] - 1e-12 and g["labels"] == g["serving"]
    assert [sorted(grp) for grp in g["groups"]] == [sorted(np.array(g["task_names"])[w[:, c] > 0]) for c in
                                                    range(w.shape[1])]

    # grouped training trains each selected group on all its members and serves each task from its group
    stg("train-groups", str(out), "--grouping", "tag-k3", "--epochs", "1", "--baselines", "mtl", "--device", "cpu")
    metrics = json.loads((out / "groups" / "tag-k3" / "metrics.json").read_text())
    assert set(metrics["models"]) == {"grouped", "mtl"} and metrics["serving"] == g["serving"]
    assert metrics["membership"] == g["membership"]
    assert_one_line_error(stg("train-groups", str(out), "--grouping", "tag-k3", "--schedule", "switch",
                              check=False), "selection")

    # resuming by --out alone keeps recording the same affinities
    stg("datamap", "--out", str(out), "--epochs", "3")
    assert affinity_epochs(out, "tag") == [1, 2, 3] and affinity_epochs(out, "cs") == [1, 2, 3]


def test_affinity_bad_input_is_one_line(tmp_path: Path) -> None:
    out = tmp_path / "r"
    assert_one_line_error(stg("datamap", "--dataset", "fashion-sample", "--affinity", "tag,hoa", "--out", str(out),
                              check=False), "unknown affinity 'hoa'")
    assert_one_line_error(stg("datamap", "--dataset", "fashion-sample", "--affinity", "tag", "--affinity-every", "0",
                              "--out", str(out), check=False), "--affinity-every")
    assert not out.exists(), "nothing is written for bad input"
    stg("datamap", "--dataset", "fashion-sample", "--limit", "200", "--epochs", "1", "--out", str(out))
    assert_one_line_error(stg("group", str(out), "--method", "tag", "--k", "2", check=False),
                          "has no tag affinity", "--affinity tag")
    assert_one_line_error(stg("group", str(out), "--method", "nope", "--k", "2", check=False),
                          "unknown grouping method 'nope'")
