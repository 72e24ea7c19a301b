"""The ``stg`` command line: thin shells over library calls (docs/architecture.md §1)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Iterator, Sequence

from stg.errors import StgError


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error, like every other stg error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-root", default=None, help="folder holding the dataset (default: ~/.cache/stg/data or $STG_DATA_ROOT)")
    p.add_argument("--download", action="store_true", help="download the dataset if it is missing (needs internet)")
    p.add_argument("--tasks", default=None, help="task spec, e.g. 'ovr:all', 'paper15', 'ovr:cat,dog;union:pets=cat,dog;random'")
    p.add_argument("--limit", type=_int, default=None, help="use at most N training images (stratified; for quick runs)")
    p.add_argument("--val-fraction", type=_float, default=0.1, help="share of the training set held out for validation (default 0.1)")
    p.add_argument("--image-size", type=_int, default=None,
                   help="bring every image to S x S pixels, once, at load time (default: as they are; images of "
                        "several sizes go to the smallest side)")
    p.add_argument("--resize", default="crop", choices=("crop", "pad"),
                   help="how images change shape: crop (default: scale the short side to S, cut the centre) or "
                        "pad (scale the long side to S, black bars)")
    p.add_argument("--hf-config", default=None, help="hf:NAME only: the dataset's configuration")
    p.add_argument("--image-column", default=None, help="hf: datasets: the column of images (default: the Image column)")
    p.add_argument("--label-column", default=None,
                   help="hf: datasets: a column of class labels, one-vs-rest tasks (default: the ClassLabel column)")
    p.add_argument("--label-columns", default=None,
                   help="hf: datasets: comma list of binary columns, one task each (multi-label)")
    p.add_argument("--split", default=None,
                   help="hf: datasets: which of its splits are train / test (/ val), e.g. train=train,test=validation")


def _data_spec(args: argparse.Namespace, dataset: str):
    from stg.data.spec import DataSpec, HfOptions

    hf = None
    if any(v is not None for v in (args.hf_config, args.image_column, args.label_column, args.label_columns, args.split)):
        columns = None if args.label_columns is None else tuple(c.strip() for c in args.label_columns.split(",") if c.strip())
        hf = HfOptions(config=args.hf_config, image_column=args.image_column, label_column=args.label_column,
                       label_columns=columns, splits=HfOptions.parse_splits(args.split))
    return DataSpec.make(dataset, data_root=args.data_root, tasks=args.tasks, limit=args.limit,
                         val_fraction=args.val_fraction, split_seed=args.seed, image_size=args.image_size,
                         resize=args.resize, hf=hf)


class _LoadBar:
    """Image decoding on the command line: a tqdm bar on stderr (on a terminal only: no redraws in a
    log file) and the loader's one-line notes (e.g. how images were resized)."""

    bar: Any = None

    def __call__(self, e) -> None:
        from tqdm import tqdm

        if e.kind == "note":
            tqdm.write(e.message, file=sys.stderr)
        elif e.kind == "start":
            self.bar = tqdm(total=e.total, unit="img", desc="decoding images", dynamic_ncols=True, file=sys.stderr,
                            disable=not sys.stderr.isatty())
        elif self.bar is not None:
            self.bar.update(max(0, e.done - self.bar.n))
            if e.kind == "done":
                self.bar.close()
                self.bar = None


# -- commands ----------------------------------------------------------------------------------

def cmd_data(args: argparse.Namespace) -> int:
    from stg.data.datasets import load_taskset_from_spec

    spec = _data_spec(args, args.name)
    taskset = load_taskset_from_spec(spec, download=args.download, progress=_LoadBar())
    info = taskset.describe()
    if args.json:
        print(json.dumps(info))
        return 0
    print(f"{info['dataset']}: {info['n_train']} train / {info['n_val']} val / {info['n_test']} test images "
          f"of shape {tuple(info['image_shape'])}, {info['n_tasks']} tasks ({info['tasks_spec']})")
    for name, pos, pw, miss in zip(info["task_names"], info["train_positives"], info["pos_weight"],
                                   info["train_missing"]):
        print(f"  {name:<24} {pos:>7} positives  pos_weight {pw:.3g}" + (f"  {miss} missing labels" if miss else ""))
    for ref, groups in info["references"].items():
        print(f"reference {ref!r}: {len(groups)} groups")
        for g, members in groups.items():
            print(f"  {g}: {', '.join(members)}")
    if info.get("source"):
        print(f"source: {info['source']}")
    return 0


class _Bar:
    """A tqdm progress bar fed by engine events, created at the first 'start' event, plus one line
    per epoch."""

    bar: Any = None

    def __call__(self, p) -> None:
        from tqdm import tqdm

        if p.kind == "start":
            if self.bar is not None:
                self.bar.close()
            # a live bar on a terminal; in a log file only the line-per-epoch messages (no redraws)
            self.bar = tqdm(total=p.steps, initial=p.step, unit="step", dynamic_ncols=True, file=sys.stderr,
                            disable=not sys.stderr.isatty())
            self.bar.write(p.message, file=sys.stderr)
            return
        if self.bar is None:
            return
        if p.kind in ("step", "epoch"):
            self.bar.update(max(0, p.step - self.bar.n))
            self.bar.set_postfix_str(f"epoch {p.epoch}/{p.epochs} loss {p.loss:.4f} {p.images_per_s:,.0f} img/s")
            if p.kind == "epoch":
                extra = " ".join(f"{k} {v:.4f}" for k, v in p.metrics.items())
                what = f"{p.message}, epoch {p.epoch}/{p.epochs}" if p.message else f"epoch {p.epoch}/{p.epochs}"
                self.bar.write(f"{what}: loss {p.loss:.4f} {extra} ({p.images_per_s:,.0f} img/s)", file=sys.stderr)
        elif p.kind in ("done", "cancelled", "failed"):
            self.bar.update(max(0, p.step - self.bar.n))
            if p.message:
                self.bar.write(p.message, file=sys.stderr)
            self.bar.close()
            self.bar = None


@contextlib.contextmanager
def _ctrl_c_cancels() -> Iterator[threading.Event]:
    """An event the first Ctrl-C (or SIGTERM) sets: long work stops within one step and records
    itself as cancelled, never left 'running'; a second one hard-stops. Under torchrun every signal
    only cancels: Ctrl-C reaches a rank twice (from the terminal, then forwarded by torchrun), and
    torchrun itself kills ranks that do not stop in time."""
    from stg.train.distributed import launched_world_size

    cancel = threading.Event()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    one_process = launched_world_size() == 1

    def on_signal(signum, frame):
        cancel.set()
        if one_process:
            signal.signal(signum, previous[signum])

    for sig in previous:
        signal.signal(sig, on_signal)
    try:
        yield cancel
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def cmd_datamap(args: argparse.Namespace) -> int:
    from stg.affinity.files import AffinityConfig
    from stg.data.datasets import load_taskset_from_spec
    from stg.data.spec import DataSpec
    from stg.datamap.run import train_datamap
    from stg.runs.rundir import RunDir
    from stg.train.config import TrainConfig
    from stg.train.loop import Monitor

    out = Path(args.out)
    run = RunDir(out)
    if args.dataset is None:
        if not run.exists():
            raise StgError("--dataset is required for a new run (or point --out at an existing run to resume it)")
        meta = run.read()
        spec = DataSpec.from_meta(meta.get("data"))
        config = TrainConfig.from_meta({**(meta.get("config") or {}), **_given_train_args(args)})
        affinity = AffinityConfig.from_meta(meta.get("affinity"))
    else:
        spec = _data_spec(args, args.dataset)
        config = TrainConfig(**{**_given_train_args(args), "seed": args.seed, "augment": not args.no_augment,
                                "ddof": args.ddof})
        affinity = AffinityConfig.parse(args.affinity, args.affinity_every)
    taskset = load_taskset_from_spec(spec, download=args.download, progress=_LoadBar())
    with _ctrl_c_cancels() as cancel:
        meta = train_datamap(taskset, config, out, data_spec=spec, monitor=Monitor(_Bar(), cancel),
                             affinity=affinity)
    from stg.train.distributed import launched_rank

    if launched_rank() != 0:  # under torchrun, rank 0 reports for all
        return 130 if meta["status"] == "cancelled" else 0
    if meta["status"] == "cancelled":
        print(f"cancelled after {meta['epochs_done']} finished epoch(s); run `stg datamap --out {out}` to resume",
              file=sys.stderr)
        return 130
    last = meta["history"][-1] if meta["history"] else {}
    print(f"run {out}: {meta['epochs_done']} epochs, {len(meta['task_names'])} tasks, {meta['n_train']} samples; "
          f"final loss {last.get('loss', float('nan')):.4f}, val balanced accuracy "
          f"{last.get('val_balanced_accuracy', float('nan')):.3f}")
    print(f"next: stg group {out} --k K")
    return 0


def _given_train_args(args: argparse.Namespace) -> dict[str, Any]:
    """Training options given on the command line when resuming an existing run by --out alone."""
    given = {"model": args.model, "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
             "precision": args.precision, "snapshot_dtype": args.snapshot_dtype, "keep_epochs": args.keep_epochs}
    out = {k: v for k, v in given.items() if v is not None}  # unset options keep TrainConfig's defaults
    if args.device != "auto":
        out["device"] = args.device
    return out


def cmd_group(args: argparse.Namespace) -> int:
    from stg.grouping.make import make_grouping, summary_lines
    from stg.runs.rundir import RunDir

    run = RunDir(args.run)
    run.read()
    if not 0 <= args.seed < 2**32:  # numpy's seeds
        raise StgError(f"--seed must be an integer in [0, 2**32), got {args.seed}")
    if args.name is not None:
        run.check_grouping_writable(args.name)  # refuse before the work
    grouping = make_grouping(run, k=args.k, m=args.fuzziness, method=args.method, seed=args.seed, name=args.name,
                             epochs=args.epochs, projection_dim=args.projection_dim, save=False,
                             features=args.features, **({"n_init": args.n_init} if args.n_init is not None else {}))
    if not run.write_grouping(grouping["name"], grouping, overwrite=args.overwrite):
        print(f"grouping {grouping['name']!r} already holds this result: kept it", file=sys.stderr)
    for line in summary_lines(grouping):
        print(line)
    if args.scan:
        _print_k_scan(run, args)
    return 0


def _print_k_scan(run, args: argparse.Namespace) -> None:
    """Quality indices over k = 2 .. min(T - 1, 30), the recommended k, and the seed stability of --k."""
    from stg.grouping.features import task_coordinates
    from stg.grouping.quality import recommend_k, scan_k, stability

    x = task_coordinates(run, epochs=args.epochs, projection_dim=args.projection_dim, seed=args.seed,
                         features=args.features)
    ks = list(range(2, min(len(x) - 1, 30) + 1))
    if not ks:
        raise StgError(f"a k scan needs at least 3 tasks, the run has {len(x)}")
    scan = scan_k(x, ks=ks, m=args.fuzziness, method=args.method, seed=args.seed)
    print(f"\nk scan ({args.method}, m={args.fuzziness}): higher silhouette and partition coefficient, lower Xie-Beni are better")
    print(f"{'k':>4} {'silhouette':>11} {'partition':>10} {'xie_beni':>10}")
    for row in scan:
        print(f"{row['k']:>4} {row['silhouette']:>11.4f} {row['partition_coefficient']:>10.4f} {row['xie_beni']:>10.4g}")
    print(f"recommended k (best silhouette): {recommend_k(scan)}")
    stab = stability(x, k=args.k, m=args.fuzziness, method=args.method, seeds=range(args.seed, args.seed + 5))
    print(f"stability of k={args.k} over 5 seeds: mean pairwise ARI {stab['mean_ari']:.3f}")


def cmd_train_groups(args: argparse.Namespace) -> int:
    from stg.runs.rundir import RunDir
    from stg.specialists.baselines import BASELINES, parse_names

    run = RunDir(args.run)
    run.read()
    # the mistakes a user makes most, named before PyTorch loads (seconds): the rest in plan_groups
    run.read_grouping(args.grouping)
    baselines = tuple(parse_names(args.baselines, BASELINES, "baseline"))
    if args.epochs is not None and args.epochs < 1:
        raise StgError(f"--epochs must be at least 1, got {args.epochs}")

    from stg.specialists.grouped import summary_table, train_groups
    from stg.train.loop import Monitor

    schedule = _schedule(args) if args.schedule is not None else _no_schedule_params(args)
    with _ctrl_c_cancels() as cancel:
        metrics = train_groups(run, args.grouping, epochs=args.epochs, baselines=baselines, hard=args.hard,
                               executor=args.executor, device=args.device, monitor=Monitor(_Bar(), cancel),
                               schedule=schedule)
    if metrics.get("status") == "cancelled":
        print(f"cancelled; run `{_command_line(args)}` again to resume", file=sys.stderr)
        return 130
    for line in summary_table(metrics):
        print(line)
    return 0


_SCHEDULE_PARAMS = ("w0", "eta", "nu", "switch_at", "eps")


def _add_schedule_args(p: argparse.ArgumentParser, *, default: str | None) -> None:
    """MT2ST schedule options (stg.mt2st.schedules)."""
    p.add_argument("--schedule", default=default,
                   help="MT2ST schedule of the auxiliary tasks' weight: mtl, stl, diminish (w0*exp(-eta*t^nu)), "
                        "diminish-code (w0^(2^t)) or switch" + (f" (default {default})" if default else ""))
    p.add_argument("--w0", type=_float, default=None, help="diminish: initial weight (default 1); diminish-code: 0.95")
    p.add_argument("--eta", type=_float, default=None, help="diminish: decay rate >= 0 (default 0.5)")
    p.add_argument("--nu", type=_float, default=None, help="diminish: curvature > 0 (default 1)")
    p.add_argument("--switch-at", type=_float, default=None,
                   help="switch: a fraction of training in (0, 1) or a whole number of epochs (default 0.6)")
    p.add_argument("--eps", type=_float, default=None, help="diminish: weights below this are 0 (default 1e-3)")
    p.add_argument("--per-step", action="store_true", help="update the weight every step, not every epoch")


def _schedule(args: argparse.Namespace):
    from stg.mt2st.schedules import make_schedule

    return make_schedule(args.schedule, per_step=args.per_step,
                         **{k: getattr(args, k) for k in _SCHEDULE_PARAMS})


def _no_schedule_params(args: argparse.Namespace) -> None:
    given = [k for k in _SCHEDULE_PARAMS if getattr(args, k) is not None] + (["per_step"] if args.per_step else [])
    if given:
        raise StgError(f"--{given[0].replace('_', '-')} needs --schedule")
    return None


def cmd_mt2st(args: argparse.Namespace) -> int:
    from stg.mt2st.target import summary_lines, train_target_run
    from stg.runs.rundir import RunDir
    from stg.train.loop import Monitor

    run = RunDir(args.run)
    run.read()
    schedule = _schedule(args)
    with _ctrl_c_cancels() as cancel:
        metrics = train_target_run(run, args.target, helpers=args.helpers, schedule=schedule, epochs=args.epochs,
                                   device=args.device, metric=args.metric, monitor=Monitor(_Bar(), cancel))
    if metrics.get("status") == "cancelled":
        print("cancelled; run the same `stg mt2st` command again to resume", file=sys.stderr)
        return 130
    for line in summary_lines(metrics):
        print(line)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from stg.compare.report import markdown_table
    from stg.compare.run import compare_dir, run_compare
    from stg.runs.rundir import RunDir
    from stg.train.loop import Monitor

    run = RunDir(args.run)
    run.read()
    with _ctrl_c_cancels() as cancel:
        report = run_compare(run, args.k, seeds=args.seeds, epochs=args.epochs, controls=args.controls,
                             executor=args.executor, device=args.device, features=args.features,
                             m=args.fuzziness, monitor=Monitor(_Bar(), cancel))
    out = compare_dir(run, args.k)
    if report["status"] == "cancelled":
        print(f"cancelled after {report['trainings']['done']} of {report['trainings']['total']} trainings; run the "
              f"same `stg compare` command again to resume", file=sys.stderr)
        return 130
    print(markdown_table(report))
    print(f"report: {out / 'report.html'} (self-contained), {out / 'report.json'}, {out / 'report.md'}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from stg.runs.export import export_grouping
    from stg.runs.rundir import RunDir, atomic_write_bytes, check_output_file

    run = RunDir(args.run)
    meta = run.read()
    target = check_output_file(args.out) if args.out else None  # before any work: never into a run
    name = args.grouping
    if name is None:
        names = run.grouping_names()
        if not names:
            raise StgError(f"run {run.path} has no grouping yet: run `stg group {run.path} --k K` first")
        name = max(names, key=lambda n: run.grouping_path(n).stat().st_mtime)
    text = export_grouping(run.read_grouping(name), meta.get("references", {}), fmt=args.format)
    if target is not None:
        atomic_write_bytes(target, text.encode())
        print(f"wrote {args.out} (grouping {name!r}, {args.format})", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def cmd_app(args: argparse.Namespace) -> int:
    import subprocess
    import time
    import urllib.request
    import webbrowser

    if not 1 <= args.port <= 65535:
        raise StgError(f"--port must be in 1..65535, got {args.port}")
    import socket

    try:
        socket.getaddrinfo(args.host, args.port)
    except (OSError, UnicodeError):
        raise StgError(f"--host {args.host!r} is not an address or host name this machine can bind") from None
    app = Path(__file__).resolve().parents[1] / "stg_app" / "Home.py"  # the dashboard package, shipped beside stg
    if not app.is_file():
        raise StgError(f"the dashboard is not installed next to the library (looked for {app}): reinstall stg")
    env = {**os.environ, "STG_RUNS": str(Path(args.runs).expanduser().resolve())}
    # Always headless: Streamlit's own first-run e-mail prompt would block a fresh machine.
    cmd = [sys.executable, "-m", "streamlit", "run", str(app), "--server.port", str(args.port),
           "--server.address", args.host, "--browser.gatherUsageStats", "false", "--server.headless", "true",
           "--client.toolbarMode", "minimal"]
    url = f"http://{args.host}:{args.port}"
    print(f"stg dashboard on {url} (runs in {env['STG_RUNS']}); Ctrl-C to stop", file=sys.stderr)
    proc = subprocess.Popen(cmd, env=env, preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)

    def on_term(signum, frame):  # `kill` of stg stops the server it started too
        raise SystemExit(143)

    signal.signal(signal.SIGTERM, on_term)
    try:
        if not args.headless:
            for _ in range(120):
                if proc.poll() is not None:
                    break
                try:
                    with urllib.request.urlopen(url + "/_stcore/health", timeout=1) as r:
                        if r.read().strip() == b"ok":
                            webbrowser.open(url)
                            break
                except OSError:
                    time.sleep(0.5)
        return proc.wait()
    except KeyboardInterrupt:
        return 130
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)


# -- parser ------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    from stg.data.catalog import DATASET_NAMES

    parser = _Parser(prog="stg", description="Find which classification tasks to train together.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    datasets = ", ".join(DATASET_NAMES)

    p = sub.add_parser("data", help="describe a task set", description=f"Describe a task set. Datasets: {datasets}, a folder/.npz of your own, or hf:NAME (a Hugging Face dataset, or a folder saved with save_to_disk).")
    p.add_argument("name", help=f"dataset name ({datasets}), a path to your own data, or hf:NAME")
    _add_data_args(p)
    p.add_argument("--seed", type=_int, default=0, help="split seed (default 0)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("datamap", help="train one multi-task model and record data maps", description="Train one multi-task model on all tasks and record per-task data maps into RUN. Re-running on the same --out resumes.")
    p.add_argument("--dataset", default=None, help=f"dataset ({datasets}), a path or hf:NAME; omit to resume --out")
    _add_data_args(p)
    p.add_argument("--model", default=None, help="cnn (default), resnet18 or resnet18-cifar")
    p.add_argument("--epochs", type=_int, default=None, help="epochs (default 5)")
    p.add_argument("--batch-size", type=_int, default=None, help="batch size (default 128)")
    p.add_argument("--lr", type=_float, default=None, help="Adam learning rate (default 1e-3)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--seed", type=_int, default=0, help="seed for split, init, shuffling (default 0)")
    p.add_argument("--ddof", type=_int, default=0, help="variability ddof: 0 = Cartography (default), 1 = official STG-MTL")
    p.add_argument("--precision", default=None, choices=("auto", "bf16", "fp32"),
                   help="auto (default): bf16 autocast on GPUs and CPUs with native bf16, else fp32")
    p.add_argument("--no-augment", action="store_true", help="turn off crop/flip augmentation")
    p.add_argument("--snapshot-dtype", default=None, choices=("float32", "float16"),
                   help="how data-map snapshots are stored: float32 (default) or float16 (half the disk, "
                        "error <= 2^-12; read back as float32)")
    p.add_argument("--keep-epochs", default=None,
                   help="which data-map snapshots to keep: all (default), last (the statistics are cumulative, "
                        "so the last one carries every epoch), or every:N (epochs N, 2N, ... and the last)")
    p.add_argument("--affinity", default=None,
                   help="also record inter-task affinities in the same run: tag (TAG's lookahead), cs (gradient "
                        "cosine) or tag,cs; then `stg group RUN --method tag`")
    p.add_argument("--affinity-every", type=_int, default=10, help="probe the affinity every F steps (default 10)")
    p.add_argument("--out", required=True, help="run directory")
    p.set_defaults(func=cmd_datamap)

    p = sub.add_parser("group", help="cluster the tasks of a run", description="Cluster a run's tasks by their data maps; writes RUN/groupings/G.json.")
    p.add_argument("run", help="run directory")
    p.add_argument("--k", type=_int, required=True, help="number of clusters (2..T)")
    p.add_argument("--fuzziness", type=_float, default=1.07, help="fuzziness m > 1 (default 1.07, the paper's)")
    p.add_argument("--method", default="fuzzy-kmeans",
                   help="fuzzy-kmeans (default, STG-MTL's), fcm or kmeans on the data maps; tag or cs on the "
                        "affinities recorded with `stg datamap --affinity tag,cs` (TAG's group selection)")
    p.add_argument("--seed", type=_int, default=0)
    p.add_argument("--name", default=None, help="grouping name (default from method, k, m and any other "
                                                "setting given; an existing name is refused unless --overwrite)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing grouping of that name (never while its specialists are training)")
    p.add_argument("--epochs", default="last", help="data-map snapshots used as features: last (default), all, or e.g. 2,5")
    p.add_argument("--projection-dim", type=_int, default=None, help="random projection of the features to this many dims")
    p.add_argument("--features", default="raw",
                   help="task features: raw (default, the paper's), centred (correlation distance), rank (Spearman), "
                        "tag-rows or cs-rows (rows of the recorded affinity); formulas in stg/grouping/features.py")
    p.add_argument("--n-init", type=_int, default=None,
                   help="k-means restarts (default: 300 up to 100 tasks at k = 20, fewer beyond, never under 10: "
                        "stg.grouping.fuzzy.default_n_init)")
    p.add_argument("--scan", action="store_true", help="also print a k scan with quality indices, the recommended k and the seed stability of --k")
    p.set_defaults(func=cmd_group)

    p = sub.add_parser("train-groups", help="train one specialist per cluster against baselines", description="Train one specialist per cluster of grouping G (loss weighted by membership) and baselines under the same budget; evaluate on the test split into RUN/groups/G/metrics.json. Re-running resumes.")
    p.add_argument("run", help="run directory")
    p.add_argument("--grouping", required=True, help="grouping name (see RUN/groupings/)")
    p.add_argument("--epochs", type=_int, default=None, help="epochs per model (default: the data-map run's)")
    p.add_argument("--baselines", default="mtl,random", help="comma list of mtl, random, stl (default mtl,random; '' for none)")
    p.add_argument("--hard", action="store_true", help="use hard (argmax) memberships for the specialists")
    p.add_argument("--executor", default="local", help="local (default) or ray")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    _add_schedule_args(p, default=None)
    p.set_defaults(func=cmd_train_groups)

    p = sub.add_parser("mt2st", help="train one target task with helpers under an MT2ST schedule",
                       description="Train a target task with helper tasks whose loss weight follows an MT2ST "
                                   "schedule, against the target alone (stl) and with constant helpers (mtl); writes "
                                   "RUN/mt2st/TARGET/HELPERS/metrics.json. Re-running resumes.")
    p.add_argument("run", help="run directory")
    p.add_argument("--target", required=True, help="the primary task (a task of the run)")
    p.add_argument("--helpers", default="all",
                   help="all (default: every other task) or a grouping name (the target's argmax group)")
    p.add_argument("--epochs", type=_int, default=None, help="epochs per model (default: the data-map run's)")
    p.add_argument("--metric", default="balanced_accuracy", choices=("balanced_accuracy", "auroc"),
                   help="validation metric for epochs-to-stl (default balanced_accuracy)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    _add_schedule_args(p, default="switch")
    p.set_defaults(func=cmd_mt2st)

    p = sub.add_parser("compare", help="train every grouping method and control under one budget and compare them",
                       description="Build the groupings of every method (STG-MTL with each task-feature variant; TAG "
                                   "and gradient cosine when the run recorded affinities), the controls (mtl, stl, "
                                   "random) and each reference grouping; train each under the same budget for "
                                   "--seeds seeds; write RUN/compare/K/report.json, report.html (self-contained) "
                                   "and report.md. Re-running resumes; finished trainings are not retrained.")
    p.add_argument("run", help="run directory")
    p.add_argument("--k", type=_int, required=True, help="number of groups (2..T)")
    p.add_argument("--seeds", type=_int, default=3, help="seeds per candidate (default 3): data order and init")
    p.add_argument("--epochs", type=_int, default=None, help="epochs per model (default: the data-map run's)")
    p.add_argument("--controls", default="mtl,stl,random", help="comma list of mtl (required), stl, random "
                                                                "(default all three)")
    p.add_argument("--features", default=None, help="comma list of STG-MTL task-feature variants to compare "
                                                     "(default: every one the run has)")
    p.add_argument("--fuzziness", type=_float, default=1.07, help="STG-MTL's fuzziness m (default 1.07)")
    p.add_argument("--executor", default="local", help="local (default) or ray")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("export", help="export a grouping", description="Export a grouping as JSON, CSV or YAML.")
    p.add_argument("run", help="run directory")
    p.add_argument("--grouping", default=None, help="grouping name (default: the newest)")
    p.add_argument("--format", default="json", choices=("json", "csv", "yaml"))
    p.add_argument("--out", default=None, help="file to write (default: standard output)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("app", help="open the dashboard", description="Start the Streamlit dashboard.")
    p.add_argument("--runs", default="runs", help="folder of run directories (default ./runs)")
    p.add_argument("--port", type=_int, default=8501)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default localhost only)")
    p.add_argument("--headless", action="store_true", help="do not open a browser")
    p.set_defaults(func=cmd_app)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except StgError as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `stg data ... --json | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:  # disk full, read-only, permissions, over-long names: the OS's reason, one line
        where = f" {e.filename}" if e.filename else ""
        print(f"error: {e.strerror or _one_line(e)}:{where}" if where else f"error: {e.strerror or _one_line(e)}",
              file=sys.stderr)
        return 2
    except MemoryError:
        print("error: out of memory: use a smaller --batch-size, --limit or model", file=sys.stderr)
        return 2
    except Exception as e:  # a bug: one line for the user; STG_DEBUG=1 shows the traceback
        if os.environ.get("STG_DEBUG"):
            raise
        print(f"error: unexpected {type(e).__name__}: {_one_line(e)[:300]} (STG_DEBUG=1 shows the traceback; "
              "please report it)", file=sys.stderr)
        return 1


def _die_with_parent() -> None:
    """In the Streamlit child: the kernel sends it SIGTERM when `stg app` dies, even by kill -9."""
    import ctypes

    try:
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _command_line(args: argparse.Namespace) -> str:
    """The command as the user typed it (for a resume hint that keeps every option)."""
    import shlex

    argv = getattr(args, "argv", None) or sys.argv[1:]
    return " ".join(shlex.quote(a) for a in ["stg", *argv])


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


if __name__ == "__main__":
    sys.exit(main())

