"""``@hparam_search``: glue from ``sys.argv`` to config to runner, and one-line errors.

Importing this module is cheap (the config, Optuna and the runner are imported when a search
starts): a trial process imports the user's script, which applies the decorator, but never
launches a search.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hparam_joblib._errors import ConfigError, HparamError, UsageError
from hparam_joblib._logging import set_verbosity
from hparam_joblib._logging import setup as setup_logging
from hparam_joblib._pipes import quiet_closed_pipes
from hparam_joblib._result import SearchResult
from hparam_joblib.runtime._signals import (
    install_handlers,
    reset_stopping,
    shield_children,
    signum_of,
    stop_handlers,
    stopping,
    unshield,
)
from hparam_joblib.runtime.trial._funcref import WRAPPED_ATTR
from hparam_joblib.runtime.trial._trial_process import IN_TRIAL_PROCESS_ENV

if TYPE_CHECKING:
    from hparam_joblib._cli import ScriptArgs
    from hparam_joblib.config._schema import SearchConfig

logger = logging.getLogger("hparam_joblib")


def _check_signature(func: Callable[..., Any], source: str) -> None:
    try:
        inspect.signature(func).bind({})
    except TypeError as err:
        name = getattr(func, "__qualname__", repr(func))
        raise ConfigError(
            source, "", f"the training function {name}() must take exactly one argument (the config dict): {err}"
        ) from err
    except ValueError:  # builtins without a signature: let the call decide
        pass


def _dry_run_text(cfg: SearchConfig, save_dir: Path, why: str = "") -> str:
    from hparam_joblib.config._space import describe_space
    from hparam_joblib.config._yaml import dump_yaml
    from hparam_joblib.runtime.launcher._runner import storage_display, threads_display

    direction = (
        f"directions: {list(cfg.directions)}" if cfg.multi_objective else f"direction: {cfg.direction}"
    )
    seeds = "" if cfg.seed is None else f", seed: {cfg.seed}"
    lines = [
        f"# config: {cfg.source}",
        f"# study:  {cfg.study_name} -> {storage_display(cfg, save_dir)} (not touched: --dry-run)",
        *([f"#         ({why})"] if why and cfg.storage.kind != "postgresql" else []),
        (
            f"# n_jobs: {_n_jobs_text(cfg)}, n_trials: {cfg.n_trials}, {direction}, "
            f"n_startup_trials: {cfg.n_startup_trials}{seeds}"
        ),
        (
            f"# trial processes: one warm process per worker, {threads_display(cfg)}, "
            f"{_recycle_text(cfg)}"
        ),
        f"# trial logs: {save_dir / cfg.study_name}/trial_NNNNN.log (trial_output: {cfg.trial_output})",
        f"# backend: {cfg.backend}" + (f" (scheduler: {cfg.dask_scheduler})" if cfg.backend == "dask" else "")
        + (f", gpus: {list(cfg.gpus)} (one per running trial)" if cfg.gpus else ""),
        f"# sampler: {cfg.sampler.describe()}",
        f"# pruner:  {cfg.pruner.describe()}",
        "# search space (in sampling order):" if any(p.when for p in cfg.params) else "# search space:",
        *[f"#   {line}" for line in describe_space(cfg.params)],
    ]
    if cfg.stop.active:
        lines.append(f"# stop:    {_stop_text(cfg)}")
    if cfg.enqueue:
        lines.append(f"# enqueue: {len(cfg.enqueue)} trial(s) first, unless an earlier run queued them:")
        lines += [f"#   {dict(entry)}" for entry in cfg.enqueue]
    lines.append(dump_yaml(dict(cfg.resolved)).rstrip())
    return "\n".join(lines)


def _stop_text(cfg: SearchConfig) -> str:
    rules = cfg.stop
    parts = []
    if rules.timeout is not None:
        parts.append(f"timeout {rules.timeout:g} s")
    if rules.no_improvement is not None:
        parts.append(f"after {rules.no_improvement} finished trials without improvement")
    if rules.at_value is not None:
        parts.append(f"at value {'>=' if cfg.direction == 'maximize' else '<='} {rules.at_value:g}")
    return ", ".join(parts) + f" (running trials then get stop_grace {rules.grace:g} s)"


def _n_jobs_text(cfg: SearchConfig) -> str:
    """``4``, or with ``n_jobs: auto`` what it starts from and the rule it runs by."""
    if not cfg.n_jobs_auto:
        return str(cfg.n_jobs)
    what = f"{len(cfg.gpus)} device(s)" if cfg.gpus else "the cores"
    return f"auto: up to {cfg.n_jobs} ({what}), a trial starting only when memory holds it"


def _recycle_text(cfg: SearchConfig) -> str:
    if cfg.trials_per_process is None:
        return "kept for every trial (trials_per_process: null)"
    return f"replaced every {cfg.trials_per_process} trial(s) (trials_per_process)"


def hparam_search(
    config_path: str | os.PathLike[str] = "config.yaml",
    save_db_directory: str | os.PathLike[str] = "./optuna_studies",
) -> Callable[[Callable[[dict[str, Any]], Any]], Callable[..., SearchResult | None]]:
    """Turn ``train(config: dict) -> float`` into a parallel Optuna search launcher.

    Calling the decorated function with no argument reads ``sys.argv`` (``--set``, ``--config``,
    ``--dry-run``, ``--help``), runs the search and exits with status 2 on bad input, 130 on
    Ctrl-C and 143 on SIGTERM. Passing ``argv=[...]`` runs it programmatically: errors are raised
    and the :class:`SearchResult` is returned. Passing a dict calls the undecorated function.

    Args:
        config_path: the YAML file; tried as given, then under ``config/`` in the working
            directory, then under ``config/`` and as is beside the module that defines the
            function, in the directory holding its top-level package, and beside the script run.
        save_db_directory: where ``<experiment_name>_<tag>.db`` is written (created if needed).

    Returns:
        A decorator.
    """

    def decorate(func: Callable[[dict[str, Any]], Any]) -> Callable[..., SearchResult | None]:
        try:
            defining_file: str | None = inspect.getfile(func)
        except TypeError:
            defining_file = None

        @functools.wraps(func)
        def launcher(argv: list[str] | dict[str, Any] | None = None) -> SearchResult | None:
            if isinstance(argv, dict):
                return func(argv)  # type: ignore[no-any-return,unused-ignore]
            cli = argv is None
            if os.environ.get(IN_TRIAL_PROCESS_ENV):
                # The script calls train() at import time: in a trial process that would start
                # a search inside the search.
                raise UsageError(
                    f"{getattr(func, '__qualname__', 'the training function')}() was called while the "
                    "script was imported by a trial process: call it under "
                    "`if __name__ == \"__main__\":` so that importing the script does not start a search"
                )
            args = sys.argv[1:] if argv is None else list(argv)
            setup_logging("hparam_joblib:")
            # Ctrl-C / kill -INT, SIGTERM and SIGUSR1 stop the set-up too (the search loop installs
            # its own): a script started in the background of a shell inherits SIGINT ignored.
            reset_stopping()
            previous = install_handlers(stop_handlers())
            shielded = shield_children()  # a job-wide SIGUSR1 reaches the launcher alone
            pipes = contextlib.ExitStack()
            if cli:  # `python train.py | head -3`: the reader leaving ends our output quietly
                pipes.enter_context(quiet_closed_pipes())
            try:
                result = _launch(func, args, config_path, Path(save_db_directory), defining_file)
            except HparamError as err:
                if not cli:
                    raise
                print(f"error: {err}", file=sys.stderr)
                raise SystemExit(err.exit_status) from None
            except KeyboardInterrupt as stop:  # a stop signal before the workers started: nothing runs
                if not cli:
                    raise
                signum = signum_of(stop)
                print(f"interrupted ({signal.Signals(signum).name}) before the search started", file=sys.stderr)
                raise SystemExit(128 + signum) from None
            finally:
                if cli and stopping():
                    # The script exits next, with the first signal's status: later ones are
                    # ignored (the interpreter's exit would reset a Python handler to the default).
                    install_handlers(dict.fromkeys(stop_handlers(), signal.SIG_IGN))
                else:
                    install_handlers(previous)
                    reset_stopping()
                if shielded:
                    unshield()
                pipes.close()
            if result is not None and result.stop_signal and cli:
                raise SystemExit(128 + result.stop_signal)
            return result

        setattr(launcher, WRAPPED_ATTR, func)  # how a trial process finds the undecorated function
        return launcher

    return decorate


def _tune(func: Callable[[dict[str, Any]], Any], cfg: SearchConfig, args: ScriptArgs) -> None:
    from hparam_joblib.runtime._allocation import allocated_cores
    from hparam_joblib.runtime.launcher import _tune as tune

    ladder = list(args.tune_ladder) or tune.default_ladder(allocated_cores(), cfg.n_jobs)
    print(
        f"tuning n_jobs for {cfg.study_name}: ladder {ladder}, {args.tune_seconds:g} s each, "
        f"in a throwaway study (the real study is not touched)"
        + (f"; the {cfg.pruner.type} pruner is off while measuring (pruned trials are shorter, "
           "so rungs that prune differently would not compare)" if cfg.pruner.type != "none" else ""),
        flush=True,
    )
    rungs = tune.run_ladder(func, cfg, ladder, args.tune_seconds)
    from hparam_joblib.runtime.trial._gpu_memory import device_total_mib
    from hparam_joblib.runtime.trial._memory import headroom_mib, memory_cgroup

    resources = tune.Resources(allocated_cores(), headroom_mib(memory_cgroup()), len(cfg.gpus),
                               device_total_mib(list(cfg.gpus)))
    print(tune.format_table(rungs, resources))
    if args.tune_plot:
        try:
            tune.save_plot(rungs, Path(args.tune_plot))
        except ImportError:
            logger.warning('no plot: matplotlib is not installed (pip install "hparam_joblib[plots]")')
        else:
            print(f"plot: {args.tune_plot}")


def _launch(
    func: Callable[[dict[str, Any]], Any],
    argv: list[str],
    config_path: str | os.PathLike[str],
    save_dir: Path,
    defining_file: str | None,
) -> SearchResult | None:
    from hparam_joblib._cli import parse_args

    args = parse_args(argv, prog=Path(sys.argv[0]).name if sys.argv and sys.argv[0] else None)
    if not (args.dry_run or args.best):
        from hparam_joblib._tested import require_tested

        # An Optuna or SQLAlchemy outside the tested range: one line, before anything starts.
        require_tested()

        from hparam_joblib.runtime.loops import _forkserver

        # The workers' preloaded server imports Optuna beside this process's own imports and
        # set-up (it runs no user code and writes nothing; it ends with this process).
        _forkserver.start()

    from hparam_joblib.config._load import load_config, package_root, resolve_config_path
    from hparam_joblib.config._savedir import resolve_save_dir
    from hparam_joblib.runtime._allocation import allocated_cores  # joblib.cpu_count(), capped by a job's
    from hparam_joblib.runtime.launcher._progress import format_summary
    from hparam_joblib.runtime.launcher._runner import run_search
    from hparam_joblib.runtime.loops._gpus import detect_gpus  # what gpus: auto means here

    # Beside the defining module, its package's project directory, then the script that was run.
    module = sys.modules.get(getattr(func, "__module__", "") or "")
    name = getattr(getattr(module, "__spec__", None), "name", None) or getattr(func, "__module__", "") or ""
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    path = resolve_config_path(args.config or config_path, defining_file, main_file, package_root(name, defining_file))
    cfg, notes = load_config(path, args.overrides, allocated_cores(), detect_gpus)
    for note in notes:
        logger.warning("note: %s", note)
    _check_signature(func, str(path))
    save_dir, why = resolve_save_dir(save_dir, path)
    if args.verbosity is not None:  # the flag wins over the file's verbosity
        cfg = dataclasses.replace(cfg, verbosity=args.verbosity)  # type: ignore[arg-type]
    set_verbosity(cfg.verbosity)
    if args.best:
        from hparam_joblib.results._retrain import retrain

        retrain(func, cfg, save_dir, args.overrides)
        return None
    if args.dry_run:
        print(_dry_run_text(cfg, save_dir, why))
        return None
    if args.tune_n_jobs:
        _tune(func, cfg, args)
        return None
    result = run_search(func, cfg, save_dir, show_progress=cfg.verbosity != "quiet", retry_failed=args.retry_failed)
    if cfg.storage.kind != "postgresql":
        result = dataclasses.replace(result, db_reason=why)
    print(format_summary(result, verbose=cfg.verbosity == "verbose"))
    return result
