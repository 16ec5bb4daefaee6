"""The ``metabench`` command: validate, list, episodes, run, parity, report, compare, index, baselines, readme.

User errors (a bad spec, missing data, an unknown adapter) print one line on stderr and exit
with code 2, without a traceback.
"""

from __future__ import annotations

import argparse
import sys

from bench.core.algorithms import all_algorithms
from bench.core.errors import MetabenchError
from bench.core.profiles import PHASE_GROUPS, phases_help

ALGORITHM_NAMES = tuple(all_algorithms())


def _defaults_help() -> str:
    """Which algorithms each profile runs by default, from the algorithms' own traits."""
    by_profile = {}
    for name, a in all_algorithms().items():
        for profile in a.default_profiles:
            by_profile.setdefault(profile, []).append(name)
    return "; ".join(f"{p}: {','.join(names)}" for p, names in by_profile.items())


def _parity_defaults() -> list[str]:
    """Parity's algorithms by default: those a cpu run runs."""
    return [name for name, a in all_algorithms().items() if "cpu" in a.default_profiles]


def _csv(value: str) -> list[str]:
    out = [v.strip() for v in value.split(",") if v.strip()]
    if not out:  # an empty list would silently mean "the defaults"
        raise argparse.ArgumentTypeError("empty: give at least one comma-separated value, or leave the flag out "
                                         "for the default")
    return out


def cmd_validate(args) -> int:
    from bench.core.spec import load_spec

    for ref in args.specs:
        spec = load_spec(ref)
        print(f"{spec.source}: ok ({spec.name}: {spec.data.dataset}, {spec.episode.n_way}-way "
              f"{spec.episode.k_shot}-shot, algorithms {', '.join(spec.algorithms())})")
    return 0


def cmd_list(args) -> int:
    from bench.core import registry
    from bench.core.profiles import PROFILES
    from bench.core.spec import builtin_spec_names, load_spec

    print("Built-in specs:")
    for name in builtin_spec_names():
        spec = load_spec(name)
        print(f"  {name:<18} {spec.description}")
    print("\nProfiles:")
    for p in PROFILES.values():
        print(f"  {p.name:<8} {p.description} ({p.repeats} timing process{'es' if p.repeats > 1 else ''} of "
              f"{p.rounds} timed rounds, {p.warmup_rounds} warm-up)")
    print("\nAdapters:")
    for e in registry.entries().values():
        flag = ("" if e.default is True else " (variant: run with --adapters)" if not e.default
                else f" (the default on {', '.join(e.default)}; elsewhere a variant)")
        print(f"  {e.name:<24} {'/'.join(e.algorithms):<14} {e.description}{flag}")
    return 0


def cmd_episodes(args) -> int:
    import time

    from bench.core.episodes import EpisodeSampler
    from bench.core.spec import load_spec

    spec = load_spec(args.spec)
    if args.algorithm and args.role == "train":
        spec = spec.for_algorithm(args.algorithm)
        shape = spec.train_shape(args.algorithm)
    else:
        shape = spec.episode
    sampler = EpisodeSampler(spec, args.role, shape, data_dir=args.data_dir, cache_dir=args.cache_dir)
    t0 = time.perf_counter()
    fp = sampler.fingerprint(args.count)
    secs = time.perf_counter() - t0
    print(f"{spec.name} {args.role} seed={spec.seed} {shape.n_way}-way {shape.k_shot}-shot "
          f"{shape.n_query}-query x{args.count}: {fp}")
    print(f"  dataset identity: {sampler.identity}", file=sys.stderr)
    print(f"  sampled in {secs:.2f} s", file=sys.stderr)
    return 0


def cmd_run(args) -> int:
    """Exit 1 when any cell failed or any adapter failed parity (the report is written anyway)."""
    from bench.run.runner import RunRequest, failures, run

    run_dir = run(RunRequest.from_args(args))
    if run_dir is None:  # --dry-run: the plan was printed
        return 0
    failed = failures(run_dir)
    if failed:
        print(f"metabench: {len(failed)} failure(s), the other results are complete: {'; '.join(failed)}")
    return 1 if failed else 0


def cmd_parity(args) -> int:
    from bench.check.parity import REFERENCE, run_parity
    from bench.core import registry

    if args.batch_size < 1:
        raise MetabenchError(f"--batch-size: tasks in the compared meta-batch, at least 1; got {args.batch_size}")
    if args.tolerance is not None and not (args.tolerance > 0):
        raise MetabenchError(f"--tolerance: a relative error above 0 (default 1e-4 on CPU), got {args.tolerance}")

    frameworks = args.frameworks or sorted({e.framework for e in registry.entries().values()} - {REFERENCE})
    return run_parity(specs=args.specs, algorithms=args.algorithms, frameworks=frameworks,
                      adapters=args.adapters, data_dir=args.data_dir, cache_dir=args.cache_dir,
                      tolerance=args.tolerance, batch_size=args.batch_size, device=args.device, out=args.out,
                      use_cache=not args.no_cache, quick=args.quick)


def cmd_report(args) -> int:
    from pathlib import Path

    from bench.report.report import write_report

    write_report(Path(args.run_dir), baseline=args.baseline)
    print(Path(args.run_dir) / "summary.md")
    return 0


def cmd_compare(args) -> int:
    """Exit 1 with ``--fail-above`` when a step slowed down beyond it (CI excluding no change)."""
    from pathlib import Path

    from bench.core.atomic import write_text
    from bench.report.compare import compare_runs, markdown

    if args.fail_above is not None and not (args.fail_above >= 0):
        raise MetabenchError(f"--fail-above: a percentage of at least 0, got {args.fail_above}")
    c = compare_runs(Path(args.run_a), Path(args.run_b))
    if c.steps.empty and c.accuracy.empty:  # empty tables would read as "no change"
        raise MetabenchError(f"compare: {args.run_a} and {args.run_b} share no timed step and no accuracy row "
                             f"({len(c.only)} rows are in one run only); compare runs of the same specs, "
                             f"algorithms and adapters")
    print(markdown(c, args.fail_above, tablefmt="simple"))
    if args.out:
        try:
            write_text(args.out, markdown(c, args.fail_above))
        except OSError as e:
            raise MetabenchError(f"--out: cannot write {args.out} ({e.strerror or type(e).__name__}); "
                                 f"name a file in a folder you can write") from None
    return 1 if args.fail_above is not None and not c.regressions(args.fail_above).empty else 0


def cmd_index(args) -> int:
    from pathlib import Path

    from bench.report.report import write_index

    print(write_index(Path(args.results_dir)))
    return 0


def cmd_readme(args) -> int:
    """Regenerate (or with ``--check`` verify) the generated blocks of Markdown files."""
    from pathlib import Path

    from bench.report import readme

    stale = 0
    for name in args.files:
        path = Path(name)
        if not path.is_file():
            raise MetabenchError(f"{name}: no such Markdown file; name a file that holds "
                                 "<!-- metabench:headline RUN --> blocks (default README.md)")
        if args.check:
            bad = [b.run for b in readme.blocks(path) if b.stale]
            for run in bad:
                print(f"{name}: the block generated from {run} is stale; run `metabench readme {name}`")
            stale += len(bad)
        else:
            print(f"{name}: {readme.update(path)} block(s) rewritten")
    return 1 if stale else 0


def cmd_check(args) -> int:
    """The contract on synthetic episodes, then (``--parity``) a quick parity run, for each
    adapter named; one verdict line per adapter at the end."""
    import tempfile
    from pathlib import Path

    import pandas as pd

    from bench.check import contract as check
    from bench.check.parity import QUICK_TASKS, check_specs, reference_adapter, run_parity
    from bench.core import registry

    names = list(dict.fromkeys(args.adapters))
    contract = check.check_many_in_subprocess(names, args.device, args.threads)
    for name in names:
        print(check.format_results(name, contract[name]))
    verdicts = {name: [f"contract: {r.check} ({r.case})" for r in contract[name] if not r.ok] for name in names}
    entries = {name: registry.get(name) for name in names}
    # torch variants are compared too; the reference adapters are what the others are compared with
    compared = {name: [a for a in e.algorithms if reference_adapter(a) != name] for name, e in entries.items()}
    algorithms = list(dict.fromkeys(a for algos in compared.values() for a in algos))
    if args.parity and algorithms:
        # the MAML family on the sinusoid (the MLP) and on Omniglot (Conv-4: BatchNorm, max-pool,
        # second order), ProtoNet on Omniglot; a plugin's section added where they lack it
        specs = check_specs(algorithms, args.cache_dir)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "parity.csv"
            run_parity(specs=specs, algorithms=algorithms, adapters=[n for n in names if compared[n]],
                       data_dir=args.data_dir, cache_dir=args.cache_dir, batch_size=QUICK_TASKS, device=args.device,
                       threads=args.threads, quick=True, out=out)
            table = pd.read_csv(out) if out.exists() else None
        for name in names:
            if not compared[name]:
                continue
            rows = table[table["adapter"] == name] if table is not None else None
            if rows is None or rows.empty:
                verdicts[name].append("parity: not compared (see above)")
            else:
                verdicts[name] += [f"parity on {r.spec} / {r.algorithm}" for r in rows.itertuples() if not r.ok]
    print()
    for name in names:
        bad = verdicts[name]
        print(f"{name}: " + (f"FAILED: {'; '.join(bad)}" if bad else
                             "passes the contract" + (" and quick parity" if args.parity and compared[name] else "")))
    return 1 if any(verdicts.values()) else 0


def cmd_new_adapter(args) -> int:
    """Write a plugin package skeleton whose placeholder maths passes the contract, not parity;
    with ``--into``, add the adapter to such a package (sharing its backend)."""
    from bench.cli import scaffold

    if args.into:
        root, files = scaffold.add_adapter(args.name, args.framework, args.algorithm, args.into)
        print(f"added {args.name} to {root}/: {', '.join(files)} (its backend: backend.py, shared)")
    else:
        root = scaffold.new_adapter(args.name, args.framework, args.algorithm, args.dir)
        print(f"wrote {root}/: {', '.join(scaffold.render(args.name, args.framework, args.algorithm))}")
        print("replace each TODO(backend) of backend.py with your framework's.")
    print("write every TODO(maths) of the adapter's module, then delete its line placeholder = True. Next:")
    for line in scaffold.next_steps(root, args.name, args.algorithm, added=bool(args.into)):
        print(f"  {line}")
    return 0


def cmd_baselines(args) -> int:
    """``bench.check.baselines`` (one process per framework; its flags are its own)."""
    from bench.check.baselines.run import main as baselines_main

    return baselines_main(args.args, prog="metabench baselines")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="metabench", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)

    def data_flags(p):
        p.add_argument("--data-dir", help="folder holding omniglot/ (default $METABENCH_DATA_DIR, "
                                          "else ~/.cache/metabench/data)")
        p.add_argument("--cache-dir", help="decoded-array cache (default $METABENCH_CACHE_DIR, "
                                           "else ~/.cache/metabench/cache)")

    p = sub.add_parser("validate", help="check spec files; exit 0 when valid")
    p.add_argument("specs", nargs="+", metavar="SPEC", help="TOML file or built-in spec name")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("list", help="built-in specs, profiles and adapters")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("episodes", help="fingerprint of a spec's episode set")
    p.add_argument("spec")
    p.add_argument("--count", type=int, default=600)
    p.add_argument("--role", choices=["train", "val", "test"], default="test")
    p.add_argument("--algorithm", help="training episodes take this algorithm's shape (with --role train)")
    data_flags(p)
    p.set_defaults(func=cmd_episodes)

    p = sub.add_parser("run", help="run the benchmark and write a results folder")
    p.add_argument("--profile", choices=["smoke", "cpu", "paper"], default=None,
                   help="budget profile (default: paper with a GPU, cpu without)")
    p.add_argument("--frameworks", type=_csv, help="comma-separated, e.g. torch,jax,tensorflow (default: all found)")
    p.add_argument("--algorithms", type=_csv,
                   help=f"comma-separated subset of {','.join(ALGORITHM_NAMES)} "
                        f"(default: the profile's; {_defaults_help()})")
    p.add_argument("--specs", type=_csv, help="comma-separated spec names or TOML files")
    p.add_argument("--adapters", type=_csv, help="exact adapter names (variants included); overrides --frameworks")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--threads", type=int, help="CPU threads per framework (default: all available cores)")
    p.add_argument("--results-dir", default="results")
    p.add_argument("--run-id", help="name of the run's folder (default: UTC time and profile)")
    p.add_argument("--phases", type=_csv, default=None,
                   help=f"comma-separated subset of {','.join(PHASE_GROUPS)} (default: the profile's: "
                        f"{phases_help()}; parity checks every adapter's contract, then compares it with torch, "
                        "before the first cell)")
    p.add_argument("--cell-timeout", type=float, help="seconds after which a cell's process is killed")
    p.add_argument("--resume", action="store_true",
                   help="with --run-id of an earlier run: keep its finished cells, run the rest")
    p.add_argument("--seeds", type=int, default=1,
                   help="training seeds per cell (initial weights and training-episode order; the test "
                        "episodes stay the same): accuracy at every seed, timing and memory at seed 0")
    p.add_argument("--dry-run", action="store_true", help="print the plan (cells, phases, estimated duration) and exit")
    p.add_argument("--repeats", type=int, metavar="R",
                   help="timing processes per cell, interleaved across the cells compared (default: the "
                        "profile's: smoke 1, cpu 3, paper 5); CIs need at least 2")
    p.add_argument("--order-seed", type=int, default=0, metavar="N",
                   help="seed of the interleaved order of the timing processes (recorded in plan.json)")
    p.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE",
                   help="change a field of every spec, validated like the file (repeatable): maml.inner_steps=5")
    p.add_argument("--sweep", action="append", metavar="SECTION.FIELD=V1,V2,...",
                   help="one spec per value, every combination when repeated: maml.inner_steps=1,2,5,10")
    p.add_argument("--sweep-one-at-a-time", action="store_true",
                   help="each --sweep alone, the other fields at the spec's values, not every combination")
    cluster = p.add_argument_group("where the cells run (README: Running on a cluster)")
    cluster.add_argument("--executor", choices=["local", "slurm", "ray"], default="local",
                         help="local: here, one cell at a time (default); slurm: Slurm jobs through submitit; "
                              "ray: Ray tasks")
    cluster.add_argument("--group-by", choices=["cell", "framework"], default="cell",
                         help="one job per cell (default), or per framework (its cells in sequence)")
    cluster.add_argument("--slurm-partition", help="sbatch --partition")
    cluster.add_argument("--slurm-gpus", type=int, help="GPUs per job (default: 1 with --device cuda, else 0)")
    cluster.add_argument("--slurm-cpus", type=int,
                         help="CPUs per job (default: --threads; --threads defaults to it, else 4)")
    cluster.add_argument("--slurm-mem-gb", type=float, help="memory per job (default: the profile's, 8-32 GB)")
    cluster.add_argument("--slurm-time-min", type=int,
                         help="time limit per job (default: its cells' watchdog limits summed, +10%%)")
    cluster.add_argument("--slurm-account", help="sbatch --account")
    cluster.add_argument("--slurm-constraint", help="sbatch --constraint (e.g. one GPU model: comparable timings)")
    cluster.add_argument("--slurm-exclusive", action="store_true",
                         help="sbatch --exclusive: no other job on a cell's node (CPU timing)")
    cluster.add_argument("--slurm-cluster", choices=["slurm", "local"], default=None,
                         help="local: submitit's local executor runs the jobs here (the same code path up to "
                              "sbatch), to try a Slurm run without a cluster")
    cluster.add_argument("--ray-address", help="an existing Ray cluster (auto, ray://HOST:10001); "
                                               "default: a Ray instance started here for the run")
    data_flags(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("parity", help="check that every framework computes what PyTorch computes")
    p.add_argument("--specs", type=_csv, default=["omniglot-5w1s", "sinusoid-10shot"])
    p.add_argument("--algorithms", type=_csv, default=_parity_defaults(),
                   help=f"comma-separated subset of {','.join(ALGORITHM_NAMES)} (default: "
                        f"{','.join(_parity_defaults())}, those a cpu run runs)")
    p.add_argument("--frameworks", type=_csv, default=None,
                   help="frameworks compared against torch, by their default adapters (default: every "
                        "framework registered, plugins included)")
    p.add_argument("--adapters", type=_csv, help="exact adapter names, variants included; overrides --frameworks")
    p.add_argument("--tolerance", type=float, help="max relative error (default 1e-4 on CPU, 1e-3 on GPU)")
    p.add_argument("--batch-size", type=int, default=4, help="tasks in the compared meta-batch")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--out", help="write the table as CSV here")
    p.add_argument("--quick", action="store_true",
                   help="the same comparisons on 16-filter models and small episodes: seconds, for iterating")
    p.add_argument("--no-cache", action="store_true",
                   help="recompute torch's reference results instead of reading them from the cache")
    data_flags(p)
    p.set_defaults(func=cmd_parity)

    p = sub.add_parser("report", help="rebuild a run's tables, summary and plots from its cells")
    p.add_argument("run_dir")
    p.add_argument("--baseline", default="torch", help="framework or adapter the speedups are relative to")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("compare", help="run B against run A: step-time ratios with CIs, accuracy, environment")
    p.add_argument("run_a", metavar="RUN_A", help="the reference run's folder (e.g. results/<run-id>)")
    p.add_argument("run_b", metavar="RUN_B", help="the run compared with it; ratios are B / A")
    p.add_argument("--out", help="also write the comparison as Markdown here")
    p.add_argument("--fail-above", type=float, metavar="PCT",
                   help="exit 1 when a step is slower by more than PCT percent and its CI excludes no change")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("index", help="regenerate results/README.md, the index of committed runs")
    p.add_argument("results_dir", nargs="?", default="results", help="folder of run folders (default results)")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("check", help="adapters' contract on synthetic episodes (seconds), and quick parity")
    p.add_argument("adapters", metavar="ADAPTER", nargs="+", help="one or more registered adapters")
    p.add_argument("--parity", action=argparse.BooleanOptionalAction, default=True,
                   help="also compare with torch on 2 tasks (default: on; the reference is cached)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--threads", type=int, default=1)
    data_flags(p)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("new-adapter", help="write a plugin package skeleton for a new adapter (docs/adapters.md)")
    p.add_argument("name", metavar="NAME", help="the adapter's name: lowercase words joined by '-', "
                                                "e.g. mylib-protonet")
    p.add_argument("--framework", help="the framework it runs in, e.g. mylib (required without --into)")
    p.add_argument("--algorithm", required=True, help=f"one of {','.join(ALGORITHM_NAMES)}")
    p.add_argument("--dir", default=".", help="where the package folder metabench-NAME goes (default: here)")
    p.add_argument("--into", metavar="FOLDER",
                   help="add the adapter to this package folder, written by new-adapter, sharing its backend.py "
                        "(one framework per package)")
    p.set_defaults(func=cmd_new_adapter)

    # listed here; main() hands every argument after "baselines" to bench.check.baselines' own parser
    p = sub.add_parser("baselines", add_help=False, help="metabench's default MAML adapters against plain "
                                                         "torch.func / JAX / TF MAML, ratios in one run")
    p.add_argument("args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_baselines)

    p = sub.add_parser("readme", help="regenerate the Markdown blocks whose numbers come from a committed run")
    p.add_argument("files", nargs="*", default=["README.md"], metavar="FILE")
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 when a block is stale")
    p.set_defaults(func=cmd_readme)
    return ap


def command_line(argv: list[str]) -> str:
    """The command as the user typed it (``metabench run --profile smoke``), whatever
    script path or ``python -m`` launched this process: a manifest must read the same on
    every machine."""
    import shlex

    return shlex.join(["metabench", *argv])


# Commands whose subprocesses build adapters: each of them sees the adapters this process
# found when the command started (bench.core.registry.frozen_for_subprocesses), so that a
# plugin installed or removed while it runs changes nothing in it.
ADAPTER_COMMANDS = ("run", "parity", "check", "baselines")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["baselines"]:  # its flags, --help included, are bench.check.baselines' own
        args = argparse.Namespace(args=argv[1:], func=cmd_baselines, command="baselines")
    else:
        args = build_parser().parse_args(argv)
    args.command_line = command_line(argv)
    try:
        if args.command in ADAPTER_COMMANDS:
            from bench.core import registry

            with registry.frozen_for_subprocesses():
                return args.func(args)
        return args.func(args)
    except MetabenchError as e:
        for line in str(e).splitlines():  # preflight reports every problem, one line each
            print(f"metabench: error: {line}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("metabench: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
