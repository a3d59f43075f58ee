"""Command line: ``python -m sellarec <command>`` (also installed as ``sellarec``).

Any :class:`~sellarec.errors.SellarecError` becomes one line on stderr and exit code 2; anything else is a bug and
keeps its traceback. Heavy modules are imported inside the commands so ``--help`` stays instant.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import yaml

from sellarec.arguments import ArgumentParser, exit_code
from sellarec.config import SellaConfig, apply_overrides, list_presets, list_profiles, load_config, to_dict
from sellarec.errors import SellarecError

__all__ = ["main", "build_parser"]


def _add_config_args(parser: argparse.ArgumentParser, default_profile: str | None) -> None:
    parser.add_argument("--profile", default=default_profile,
                        help=f"size profile: {', '.join(list_profiles())} (default: {default_profile or 'none'})")
    parser.add_argument("--preset", default=None, help=f"method preset: {', '.join(list_presets())}")
    parser.add_argument("--config", dest="config_file", default=None, metavar="FILE",
                        help="YAML file with config sections, applied after profile and preset")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="dotted override, repeatable, e.g. --set stage3.tokens=[user,item]")
    parser.add_argument("--cache-dir", default=None, help="cache root (default: $SELLAREC_CACHE or ~/.cache/sellarec)")


def _config_from_args(args: argparse.Namespace, extra: dict[str, object] | None = None) -> SellaConfig:
    from sellarec.path_checks import readable_file, writable_folder

    if args.config_file is not None:
        readable_file(args.config_file, "--config")
    cfg = load_config(args.profile, args.preset, args.overrides, args.config_file)
    extra = dict(extra or {})
    if args.cache_dir is not None:
        extra["runtime.cache_dir"] = str(writable_folder(args.cache_dir, "--cache-dir"))
    return apply_overrides(cfg, {k: v for k, v in extra.items() if v is not None}) if extra else cfg


# Datasets whose split is CoLLM's time window, which no `data.split` rule may replace (DataConfig).
_WINDOW_SPLIT_DATASETS = ("ml1m", "amazon-book")


def _data_config_from_args(args: argparse.Namespace, extra: dict[str, object] | None = None) -> SellaConfig:
    """The configuration of the `data` commands: the profile's, with ``--dataset``/``--data-dir``; naming a dataset
    with a window split drops the profile's ``data.split`` rule unless ``--set data.split=...`` asks for one."""
    explicit = any(item.split("=", 1)[0].strip() == "data.split" for item in args.overrides)
    if args.dataset in _WINDOW_SPLIT_DATASETS and not explicit:
        args = argparse.Namespace(**{**vars(args), "overrides": ["data.split=null", *args.overrides]})
    return _config_from_args(args, {"data.dataset": args.dataset, "data.data_dir": args.data_dir, **(extra or {})})


def _cmd_data_stats(args: argparse.Namespace) -> int:
    from sellarec.data import dataset_stats, load_dataset
    from sellarec.runtime import cache_root

    cfg = _data_config_from_args(args)
    stats = dataset_stats(load_dataset(cfg.data, cache_root(cfg.runtime)))
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    print(f"dataset {stats['dataset']} (fingerprint {stats['fingerprint']}): {stats['users']} users, "
          f"{stats['items']} items; warm/cold by the '{stats['warm_definition']}' definition")
    header = (f"{'split':<6} {'rows':>8} {'raw_rows':>9} {'users':>6} {'items':>6} {'pos_rate':>8} {'warm':>7} "
              f"{'cold':>7} {'warm%':>7}")
    print(header)
    for name, row in stats["splits"].items():
        share = f"{row['warm_share']:.2f}" if "warm_share" in row else ""
        print(f"{name:<6} {row['rows']:>8} {row['raw_rows']:>9} {row['users']:>6} {row['items']:>6} "
              f"{row['positive_rate']:>8.4f} {row.get('warm_rows', ''):>7} {row.get('cold_rows', ''):>7} {share:>7}")
    print("rows = interactions with at least one earlier positive (prompt-level); raw_rows = all of the split; "
          "warm% = warm / rows")
    return 0


def _example_prompts(cfg: SellaConfig, split: str, count: int, stage: int) -> list[str]:
    from sellarec.data import load_dataset
    from sellarec.data.prompts import history_titles, item_words, render_chat, stage1_prompt, stage3_prompt
    from sellarec.runtime import cache_root

    ds = load_dataset(cfg.data, cache_root(cfg.runtime))
    rows = ds.split(split).sample(n=min(count, len(ds.split(split))), random_state=cfg.runtime.seed)
    words = item_words(ds.item_word)
    texts = []
    for row in rows.itertuples(index=False):
        history = history_titles(row.history, ds.titles, cfg.data.history_len, cfg.data.history_placeholder)
        prompt = (stage1_prompt(words, history, ds.titles[row.item], row.label) if stage == 1 else
                  stage3_prompt(words, history, ds.titles[row.item], row.label, cfg.stage3.tokens))
        prefix, answer = render_chat(None, prompt)
        texts.append(prefix + answer)
    return texts


def _cmd_data_prompts(args: argparse.Namespace) -> int:
    cfg = _data_config_from_args(args)
    for text in _example_prompts(cfg, args.split, args.n, args.stage):
        print(text, end="\n\n")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    import logging

    from sellarec.path_checks import writable_folder
    from sellarec.pipeline import run_pipeline
    from sellarec.run_table import stages_table

    writable_folder(args.out, "--out")
    cfg = _data_config_from_args(args, {"final_stage": args.until})
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    print(f"training on {cfg.data.dataset} with {cfg.backbone.name} (profile {args.profile}, preset {args.preset}) "
          f"until {cfg.final_stage} into {args.out}", flush=True)
    result = run_pipeline(cfg, Path(args.out), evaluate_test=not args.valid_only)
    print("\n" + stages_table(result.metrics), end="")
    print("stage cache: " + ", ".join(f"{k} {v}" for k, v in result.cache.items()))
    print(f"metrics: {result.out_dir / 'metrics.json'}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from sellarec.errors import ConfigError
    from sellarec.path_checks import readable_file, writable_file
    from sellarec.predict import Predictor, read_pairs, write_csv

    if args.candidates is not None and args.top_k is None:
        raise ConfigError("--candidates ranks each user's items: add --top-k K")
    if args.pairs is not None and args.top_k is not None:
        raise ConfigError("--top-k ranks candidates: pass them with --candidates instead of --pairs")
    if args.top_k is not None and args.top_k < 1:
        raise ConfigError(f"--top-k {args.top_k} must be at least 1")
    writable_file(args.out, "--out")
    option, path = ("--pairs", args.pairs) if args.pairs is not None else ("--candidates", args.candidates)
    readable_file(path, option)
    pairs = read_pairs(Path(path), option)   # bad input fails before the model loads
    if args.bundle is not None:
        from sellarec.bundle import load_bundle

        arts, warning = load_bundle(Path(args.bundle), cache_dir=args.cache_dir, device=args.device)
        if warning:
            print(f"warning: {warning}", file=sys.stderr)
    else:
        arts = _trained_run(args, args.device)
    predictor = Predictor(arts)
    out = (predictor.score(pairs, f"{option} {path}") if args.top_k is None else
           predictor.top_k(pairs, args.top_k, f"{option} {path}"))
    write_csv(out, Path(args.out))
    what = f"top {args.top_k} of {out['user_id'].nunique()} users" if args.top_k else f"{len(out)} pairs"
    print(f"scored {what} with {predictor.stage} of {arts.source} ({int(out['cold'].sum())} cold rows) "
          f"into {args.out}")
    return 0


def _trained_run(args: argparse.Namespace, device: str | None):
    """The artifacts of ``--run RUN_DIR`` or ``--mlflow-run ID`` (a sweep trial or ablation run, ``--tracking-uri``),
    from the stage cache."""
    from sellarec.run_artifacts import artifacts_from_config, artifacts_from_run

    if args.run is not None:
        return artifacts_from_run(Path(args.run), cache_dir=args.cache_dir, device=device)
    from sellarec.experiment.trained_runs import mlflow_run_config
    from sellarec.experiment.tracking import default_tracking_uri
    from sellarec.path_checks import tracking_uri

    uri = tracking_uri(args.tracking_uri) if args.tracking_uri else default_tracking_uri()
    cfg, metrics = mlflow_run_config(uri, args.mlflow_run)
    return artifacts_from_config(cfg, metrics, f"mlflow run {args.mlflow_run}", cache_dir=args.cache_dir,
                                 device=device)


def _add_trained_run_args(parser: argparse.ArgumentParser, group: argparse._MutuallyExclusiveGroup) -> None:
    """``--run``'s alternative ``--mlflow-run ID`` and the store it is in."""
    group.add_argument("--mlflow-run", default=None, metavar="ID",
                       help="MLflow run id of a finished sweep trial or ablation run (its stages from the cache)")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow store of --mlflow-run (default sqlite:///<repo>/mlflow/mlflow.db)")


def _cmd_export(args: argparse.Namespace) -> int:
    from sellarec.bundle import export_bundle
    from sellarec.path_checks import writable_folder

    writable_folder(args.to, "--to")
    arts = _trained_run(args, None)
    folder = export_bundle(arts, Path(args.to))
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    print(f"exported {arts.cfg.final_stage} of {arts.source} ({', '.join(arts.folders)}; backbone "
          f"{arts.cfg.backbone.name} not copied) into {folder} ({size / 2**20:.1f} MiB); score with: "
          f"python -m sellarec predict --bundle {folder} --pairs PAIRS.csv --out SCORES.csv")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from sellarec.run_table import runs_markdown

    print(runs_markdown([Path(f) for f in args.runs]), end="")
    return 0


def _cmd_cache(args: argparse.Namespace) -> int:
    from sellarec.cache import StageCache
    from sellarec.runtime import cache_root

    cfg = _config_from_args(args)
    store = StageCache(cache_root(cfg.runtime))
    if args.action in ("ls", "verify"):
        entries = store.entries(checksums=args.action == "verify")
        for e in entries:
            state = (f"BROKEN: {e.problem}" if e.problem else
                     f"{e.meta.get('backbone', '')} data={e.meta.get('data', '')}")
            print(f"{e.stage:<11} {e.key}  {e.size / 2**20:8.1f} MiB  {e.meta.get('created', '?')}  {state}")
        broken = sum(e.problem is not None for e in entries)
        print(f"{len(entries)} entries in {store.root}" + (f", {broken} broken (moved aside and computed again "
                                                            "when a run next needs them)" if broken else ""))
        return 1 if broken and args.action == "verify" else 0
    if not args.yes:
        raise SellarecError(f"cache clear deletes every stage artifact in {store.root}; add --yes to confirm")
    print(f"removed {store.clear(args.stage)} entries from {store.root}")
    return 0


def _cmd_config_show(args: argparse.Namespace) -> int:
    print(yaml.safe_dump(to_dict(_config_from_args(args)), sort_keys=False), end="")
    return 0


def _cmd_config_list(args: argparse.Namespace) -> int:
    print("profiles: " + ", ".join(list_profiles()))
    print("presets:  " + ", ".join(list_presets()))
    return 0


def _cmd_search(args: argparse.Namespace) -> int:
    from sellarec.tuning import search
    from sellarec.tuning.plan import options_from_args

    return search(options_from_args(args))


def _cmd_ablate(args: argparse.Namespace) -> int:
    from sellarec.ablation.commands import ablate_options, run_command

    return run_command(ablate_options(args), [*args.program, *args.argv])


def _cmd_report(args: argparse.Namespace) -> int:
    from sellarec.ablation.commands import report_command, report_options

    return report_command(report_options(args), args.program)


def _experiment_commands() -> dict[str, tuple[str, Callable[[argparse.ArgumentParser], None],
                                              Callable[[argparse.Namespace], int]]]:
    """The experiment commands: name -> (help, option declarations, handler). The scripts under ``tune/`` and
    ``ablations/`` run the same entries (:func:`script_main`), so each option is declared once."""
    from sellarec.ablation.commands import add_ablate_arguments, add_report_arguments
    from sellarec.tuning.plan import add_search_arguments

    return {
        "search": ("hyperparameter search over a search space (Ray Tune + Optuna, MLflow)", add_search_arguments,
                   _cmd_search),
        "ablate": ("run an ablation spec: cells x seeds through the stage cache, MLflow (resumes)",
                   add_ablate_arguments, _cmd_ablate),
        "report": ("render an ablation from MLflow into docs/ablations/<spec>.md and .png", add_report_arguments,
                   _cmd_report),
    }


def script_main(command: str, prog: str, description: str, argv: Sequence[str] | None = None) -> int:
    """Run experiment command ``command`` as the script ``prog`` (``tune/search.py``, ``ablations/run.py``,
    ``ablations/report.py``): the same options and handler as ``python -m sellarec COMMAND``."""
    _, add_arguments, handler = _experiment_commands()[command]
    parser = ArgumentParser(prog=prog, description=description)
    add_arguments(parser)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.program, args.argv = ["python", prog], argv
    return exit_code(lambda: handler(args))


def build_parser() -> argparse.ArgumentParser:
    """The ``sellarec`` argument parser."""
    parser = ArgumentParser(prog="sellarec", description="SeLLa-Rec training, search and ablation platform")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)

    data = commands.add_parser("data", help="dataset tools").add_subparsers(dest="action", required=True,
                                                                            parser_class=ArgumentParser)
    stats = data.add_parser("stats", help="rows, users, items, positive rate and warm/cold rows per split")
    stats.add_argument("--dataset", default=None, help="ml100k (embedded), ml1m, amazon-book or csv")
    stats.add_argument("--data-dir", default=None, help="raw data folder (ml1m, amazon-book) or file (csv)")
    stats.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _add_config_args(stats, default_profile="quick")
    stats.set_defaults(func=_cmd_data_stats)

    prompts = data.add_parser("prompts", help="print rendered example prompts of a split")
    prompts.add_argument("--dataset", default=None, help="ml100k (embedded), ml1m, amazon-book or csv")
    prompts.add_argument("--data-dir", default=None, help="raw data folder (ml1m, amazon-book) or file (csv)")
    prompts.add_argument("--split", default="test", choices=["train", "valid", "test"])
    prompts.add_argument("--stage", type=int, default=3, choices=[1, 3], help="stage-1 text or stage-3 ID-token prompt")
    prompts.add_argument("-n", type=int, default=2, help="number of prompts")
    _add_config_args(prompts, default_profile="quick")
    prompts.set_defaults(func=_cmd_data_prompts)

    train = commands.add_parser("train", help="train SeLLa-Rec stage by stage (resumes finished stages)")
    train.add_argument("--dataset", default=None, help="ml100k (embedded), ml1m, amazon-book or csv")
    train.add_argument("--data-dir", default=None, help="raw data folder (ml1m, amazon-book) or file (csv)")
    _add_config_args(train, default_profile="quick")
    train.add_argument("--until", default=None, choices=["stage1", "stage2", "stage3"],
                       help="last stage to run (default: the config's final_stage, stage3)")
    train.add_argument("--out", default="runs/train", help="run folder (metrics.json, one folder per stage)")
    train.add_argument("--valid-only", action="store_true",
                       help="skip the LLM stages' test evaluation, as a sweep does (probes and learning curves)")
    train.set_defaults(func=_cmd_train)

    predict = commands.add_parser("predict", help="score (user, item) pairs, or rank candidates, with a trained run")
    model = predict.add_mutually_exclusive_group(required=True)
    model.add_argument("--run", default=None, help="run folder of `sellarec train` (its stages from the stage cache)")
    model.add_argument("--bundle", default=None, help="bundle folder of `sellarec export` (no stage cache needed)")
    _add_trained_run_args(predict, model)
    given = predict.add_mutually_exclusive_group(required=True)
    given.add_argument("--pairs", default=None, metavar="PAIRS.csv",
                       help="csv with columns user_id,item_id (the data's raw ids) to score")
    given.add_argument("--candidates", default=None, metavar="ITEMS.csv",
                       help="csv with columns user_id,item_id: each user's candidate items, ranked (with --top-k)")
    predict.add_argument("--top-k", type=int, default=None, metavar="K", help="best K candidates per user")
    predict.add_argument("--out", required=True, metavar="SCORES.csv",
                         help="output csv: user_id,item_id,score,model,cold (top-k: user_id,rank,item_id,...)")
    predict.add_argument("--cache-dir", default=None,
                         help="stage cache of --run (default: its config's); backbone cache of both")
    predict.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (default: the run's)")
    predict.set_defaults(func=_cmd_predict)

    export = commands.add_parser("export", help="write a trained run as a self-contained bundle for `predict`")
    exported = export.add_mutually_exclusive_group(required=True)
    exported.add_argument("--run", default=None, help="run folder of `sellarec train`")
    _add_trained_run_args(export, exported)
    export.add_argument("--to", required=True, help="new bundle folder")
    export.add_argument("--cache-dir", default=None, help="stage cache the run trained with (default: its config's)")
    export.set_defaults(func=_cmd_export)

    compare = commands.add_parser("compare", help="markdown table of finished runs' final-stage metrics")
    compare.add_argument("runs", nargs="+", help="run folders written by `sellarec train --out`")
    compare.set_defaults(func=_cmd_compare)

    cache = commands.add_parser("cache", help="the shared stage cache").add_subparsers(dest="action", required=True,
                                                                                       parser_class=ArgumentParser)
    cache_ls = cache.add_parser("ls", help="list stage artifacts (a broken one as BROKEN: sizes checked)")
    cache_verify = cache.add_parser("verify", help="check every stage artifact against its recorded SHA-256 "
                                                   "(exit 1 if one is broken)")
    cache_clear = cache.add_parser("clear", help="delete stage artifacts")
    cache_clear.add_argument("--yes", action="store_true", help="confirm the deletion")
    cache_clear.add_argument("--stage", default=None, choices=["stage1", "stage1_test", "stage2", "stage3", "stage3_test"],
                             help="only this stage's entries (stage1_test, stage3_test: test evaluations)")
    for sub in (cache_ls, cache_verify, cache_clear):
        _add_config_args(sub, default_profile=None)
        sub.set_defaults(func=_cmd_cache)

    config = commands.add_parser("config", help="configuration tools").add_subparsers(dest="action", required=True,
                                                                                       parser_class=ArgumentParser)
    show = config.add_parser("show", help="print the resolved configuration as YAML")
    _add_config_args(show, default_profile="quick")
    show.set_defaults(func=_cmd_config_show)
    config.add_parser("list", help="list profiles and presets").set_defaults(func=_cmd_config_list)

    for name, (help_text, add_arguments, handler) in _experiment_commands().items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        add_arguments(sub)
        sub.set_defaults(func=handler, program=["python", "-m", "sellarec", name])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv[argv.index(args.command) + 1:]   # an experiment's own options, recorded with its runs
    return exit_code(lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
