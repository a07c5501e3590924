"""How a sweep searches: the checks that search algorithm, scheduler and space fit, and Tune's objects for them."""

from __future__ import annotations

from typing import Any

from sbir.config import Config
from tune.outcome import SweepError
from tune.space import Dimension


def check_search(dimensions: list[Dimension], config: Config) -> None:
    """Search algorithm, scheduler and space must fit together (before anything starts)."""
    tune, kinds = config.tune, {d.kind for d in dimensions}
    if tune.search_alg == "grid" and kinds - {"choice", "grid"}:
        continuous = [d.key for d in dimensions if d.kind not in ("choice", "grid")]
        raise SweepError(f"tune.search_alg=grid needs choice/grid values only; {', '.join(continuous)} are ranges")
    if tune.search_alg == "optuna" and "grid" in kinds:
        grids = [d.key for d in dimensions if d.kind == "grid"]
        raise SweepError(
            f"tune.search_alg=optuna samples; it cannot expand grid values ({', '.join(grids)}): use choice"
        )
    epochs = config.train.epochs
    if tune.max_t is not None and tune.max_t > epochs:
        raise SweepError(f"tune.max_t={tune.max_t} is longer than train.epochs={epochs}; lower it or raise the epochs")
    if tune.scheduler == "asha" and tune.grace_period > (tune.max_t or epochs):
        raise SweepError(f"tune.grace_period={tune.grace_period} exceeds the {tune.max_t or epochs} epochs of a trial")
    if config.train.model_selection != "seen_val":
        raise SweepError("a sweep selects on held-out seen classes: train.model_selection must be seen_val")
    if not config.data.val_fraction:
        raise SweepError("a sweep needs validation classes to rank trials: set data.val_fraction > 0")


def param_space(dimensions: list[Dimension], search_alg: str) -> dict[str, Any]:
    """Tune's param_space; with the grid searcher every choice is expanded as a grid."""
    if search_alg == "grid":
        from ray import tune

        return {d.key: tune.grid_search(list(d.values)) for d in dimensions}
    return {d.key: d.to_tune() for d in dimensions}


def searcher(config: Config):
    """The Tune search algorithm of tune.search_alg (random and grid: Tune's own variant generator)."""
    tune = config.tune
    if tune.search_alg == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(seed=tune.seed)
    from ray.tune.search import BasicVariantGenerator

    return BasicVariantGenerator(random_state=tune.seed, max_concurrent=tune.max_concurrent_trials)


def scheduler(config: Config):
    """ASHA on the trial's own epoch, or FIFO (every trial runs all its epochs)."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    tune = config.tune
    if tune.scheduler == "fifo":
        return FIFOScheduler()
    return ASHAScheduler(
        time_attr="epoch",  # our own epoch count survives a retried trial; training_iteration restarts
        max_t=tune.max_t or config.train.epochs,
        grace_period=tune.grace_period,
        reduction_factor=tune.reduction_factor,
    )


def grid_points(dimensions: list[Dimension], search_alg: str) -> int:
    """How many configurations one pass over the grid dimensions expands to."""
    points = 1
    for d in dimensions:
        if d.kind == "grid" or (search_alg == "grid" and d.kind == "choice"):
            points *= len(d.values)
    return points
