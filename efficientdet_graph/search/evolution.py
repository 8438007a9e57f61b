"""Regularized evolution as an Optuna sampler.

Regularized evolution (aging evolution) is the search method of Real, Aggarwal, Huang and Le,
"Regularized Evolution for Image Classifier Architecture Search", AAAI 2019 (arXiv 1802.01548),
the algorithm behind AmoebaNet. It keeps a population of ``P`` evaluated architectures and
repeats one step: draw ``S`` members uniformly at random (a tournament), take the best of them
as the parent, copy it and change exactly one of its choices (a mutation), evaluate the child,
add it to the population and remove the *oldest* member. Removing the oldest rather than the
worst is the "regularization": an architecture survives only as long as its descendants keep
scoring well, so one lucky evaluation cannot dominate the search forever.

How it maps onto Optuna
-----------------------
Optuna's studies already hold the history, so the population is not stored anywhere; it is
read from the trials each time a trial starts:

* warm-up: while fewer than ``population_size`` trials are COMPLETE, every parameter is drawn
  at random (an internal :class:`optuna.samplers.RandomSampler`), as the paper seeds its
  population with random architectures;
* population: the ``population_size`` most recently completed COMPLETE trials, ordered by
  ``datetime_complete`` (ties by trial number). Failed, pruned and running trials are not
  members, and a member leaves when ``population_size`` newer trials have completed, however
  good it was;
* the tournament and the choice of the mutated parameter happen at the trial's first
  :meth:`~RegularizedEvolutionSampler.sample_independent` call. They are written to the trial's
  system attributes (:data:`PARENT_KEY`, :data:`MUTATED_KEY`, :data:`TOURNAMENT_KEY`), so that
  later calls, other processes and any storage (in-memory, journal file, RDB) see the same
  choice; a warm-up trial gets ``PARENT_KEY = None``;
* every later parameter copies the parent's value, except the mutated one, which is redrawn
  from its distribution to a value *different* from the parent's (another category; another
  int or float value). Define-by-run spaces are handled per parameter: a parameter the parent
  does not have (the child went down another branch), or whose copied value does not fit the
  distribution the child asks for, is drawn at random;
* :meth:`~RegularizedEvolutionSampler.infer_relative_search_space` returns ``{}``: everything is
  independent sampling, which is what lets conditional spaces work. Enqueued trials
  (:meth:`optuna.study.Study.enqueue_trial`) keep their fixed parameters, which Optuna applies
  before asking the sampler; the mutation is never spent on a fixed parameter.

Extensions beyond the paper
---------------------------
* Multi-objective: the tournament winner is a member of the sample's first non-domination
  front (Pareto dominance under the study's directions, computed within the sample); ties,
  here and in the single-objective case, are broken uniformly at random.
* Constraints (``constraints_func``, as in Optuna's NSGA-II and TPE samplers): the values are
  evaluated in :meth:`~RegularizedEvolutionSampler.after_trial` and stored under Optuna's
  constraints key, so ``study.best_trials`` respects them. A trial is feasible when every value
  is <= 0. In a tournament a feasible member beats every infeasible one, and among infeasible
  members the smaller total violation (sum of the positive values) wins. Constraints recorded
  with ``trial.set_constraint`` (Optuna >= 5) are honoured the same way.

Determinism: for a given ``seed`` and one worker, the same objective gives the same sequence
of trials. With several workers the order in which trials complete decides the populations,
so runs are not reproducible, but every decision is still recorded in the trials.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    check_distribution_compatibility,
)
from optuna.samplers import BaseSampler, RandomSampler
from optuna.samplers._base import _CONSTRAINTS_KEY
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, TrialState

__all__ = ["MUTATED_KEY", "PARENT_KEY", "TOURNAMENT_KEY", "RegularizedEvolutionSampler"]

#: Trial system attribute: number of the parent trial, or ``None`` for a warm-up (random) trial.
PARENT_KEY = "evolution:parent"
#: Trial system attribute: name of the parameter chosen for mutation (``None`` if none could be).
MUTATED_KEY = "evolution:mutated"
#: Trial system attribute: numbers of the trials drawn for the tournament.
TOURNAMENT_KEY = "evolution:tournament"

# Redraws of a continuous or log-scaled value before giving up on "different from the parent";
# a repeat has probability zero for continuous floats and is rare for log-scaled ints.
_MAX_REDRAWS = 1000


class _Plan:
    """What one trial does: random, or copy ``parent_params`` and mutate ``mutated``."""

    __slots__ = ("parent_params", "parent_distributions", "mutated")

    def __init__(
        self,
        parent_params: dict[str, Any] | None,
        parent_distributions: dict[str, BaseDistribution] | None,
        mutated: str | None,
    ) -> None:
        self.parent_params = parent_params
        self.parent_distributions = parent_distributions
        self.mutated = mutated


class RegularizedEvolutionSampler(BaseSampler):
    """Regularized (aging) evolution, Real et al. 2019, as an Optuna sampler.

    Args:
        population_size: how many of the most recently completed trials form the population
            (the paper's ``P``); also the number of random warm-up trials. At least 2.
        sample_size: tournament size (the paper's ``S``), 1 <= ``sample_size`` <=
            ``population_size``. ``sample_size == population_size`` always picks the
            population's best; ``1`` is a random walk from random members.
        seed: seed for the tournament, the mutation and the random draws.
        constraints_func: maps a finished trial to constraint values; a trial is feasible when
            all are <= 0. Feasible trials win tournaments against infeasible ones.
    """

    def __init__(
        self,
        *,
        population_size: int = 20,
        sample_size: int = 5,
        seed: int | None = None,
        constraints_func: Callable[[FrozenTrial], Sequence[float]] | None = None,
    ) -> None:
        if isinstance(population_size, bool) or not isinstance(population_size, int) or population_size < 2:
            raise ValueError(f"population_size must be an integer >= 2, got {population_size!r}")
        if isinstance(sample_size, bool) or not isinstance(sample_size, int) or not 1 <= sample_size <= population_size:
            raise ValueError(
                f"sample_size must be an integer with 1 <= sample_size <= population_size ({population_size}), "
                f"got {sample_size!r}"
            )
        if constraints_func is not None and not callable(constraints_func):
            raise ValueError(f"constraints_func must be callable or None, got {constraints_func!r}")
        self._population_size = population_size
        self._sample_size = sample_size
        self._constraints_func = constraints_func
        self._random_sampler = RandomSampler(seed=seed)
        # A stream of its own, decorrelated from the random sampler's, for tournaments and mutations.
        self._rng = np.random.RandomState(None if seed is None else np.random.SeedSequence(seed).generate_state(4))
        # Plans of the trials running in this process; the system attributes are the source of truth.
        self._plans: dict[tuple[int, int], _Plan] = {}

    @property
    def population_size(self) -> int:
        return self._population_size

    @property
    def sample_size(self) -> int:
        return self._sample_size

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(population_size={self._population_size}, sample_size={self._sample_size}, "
            f"constraints_func={self._constraints_func!r})"
        )

    def reseed_rng(self) -> None:
        self._rng.seed()
        self._random_sampler.reseed_rng()

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return {}

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self._plans.pop((id(study._storage), trial._trial_id), None)
        self._random_sampler.before_trial(study, trial)

    def after_trial(
        self, study: Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None
    ) -> None:
        self._plans.pop((id(study._storage), trial._trial_id), None)
        if self._constraints_func is not None and state in (TrialState.COMPLETE, TrialState.PRUNED):
            constraints = None
            try:
                raw = self._constraints_func(trial)
                constraints = tuple(float(c) for c in raw)
                if any(math.isnan(c) for c in constraints):
                    constraints = None
                    raise ValueError("Constraint values cannot be NaN.")
            finally:
                # Stored even when the function fails (as None), like Optuna's own samplers.
                study._storage.set_trial_system_attr(trial._trial_id, _CONSTRAINTS_KEY, constraints)
        self._random_sampler.after_trial(study, trial, state, values)

    def sample_independent(
        self, study: Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        plan = self._plan(study, trial)
        if plan.parent_params is None or param_name not in plan.parent_params:
            return self._random(study, trial, param_name, param_distribution)
        assert plan.parent_distributions is not None
        value = plan.parent_params[param_name]
        internal = _internal_if_fits(value, plan.parent_distributions[param_name], param_distribution)
        if internal is None:
            return self._random(study, trial, param_name, param_distribution)
        if param_name == plan.mutated:
            return self._mutate(study, trial, param_name, param_distribution, internal)
        return value

    # --- the plan: warm-up or (parent, mutated parameter), decided once per trial -------------

    def _plan(self, study: Study, trial: FrozenTrial) -> _Plan:
        key = (id(study._storage), trial._trial_id)
        plan = self._plans.get(key)
        if plan is not None:
            return plan
        attrs = trial.system_attrs
        if PARENT_KEY in attrs:  # decided earlier, possibly by another process
            parent_number = attrs[PARENT_KEY]
            if parent_number is None:
                plan = _Plan(None, None, None)
            else:
                parent_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, parent_number)
                parent = study._storage.get_trial(parent_id)
                plan = _Plan(dict(parent.params), dict(parent.distributions), attrs.get(MUTATED_KEY))
        else:
            plan = self._decide(study, trial)
        self._plans[key] = plan
        return plan

    def _decide(self, study: Study, trial: FrozenTrial) -> _Plan:
        storage, trial_id = study._storage, trial._trial_id
        population = self.population(study)
        if len(population) < self._population_size:
            storage.set_trial_system_attr(trial_id, PARENT_KEY, None)
            return _Plan(None, None, None)
        picks = sorted(self._rng.choice(len(population), size=self._sample_size, replace=False).tolist())
        sample = [population[i] for i in picks]
        winners = _tournament_winners(sample, study.directions)
        parent = sample[winners[int(self._rng.randint(len(winners)))]]

        fixed = trial.system_attrs.get("fixed_params", {}) or {}
        mutable = sorted(n for n, d in parent.distributions.items() if not d.single() and n not in fixed)
        mutated = mutable[int(self._rng.randint(len(mutable)))] if mutable else None

        storage.set_trial_system_attr(trial_id, TOURNAMENT_KEY, [t.number for t in sample])
        storage.set_trial_system_attr(trial_id, MUTATED_KEY, mutated)
        # Written last: its presence marks the decision as complete for readers in other processes.
        storage.set_trial_system_attr(trial_id, PARENT_KEY, parent.number)
        return _Plan(dict(parent.params), dict(parent.distributions), mutated)

    def population(self, study: Study) -> list[FrozenTrial]:
        """The current population: the ``population_size`` most recently completed trials, oldest first."""
        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        done = sorted(done, key=lambda t: (t.datetime_complete or datetime.datetime.min, t.number))
        return done[-self._population_size :]

    # --- drawing values --------------------------------------------------------------------------

    def _random(self, study: Study, trial: FrozenTrial, name: str, distribution: BaseDistribution) -> Any:
        return self._random_sampler.sample_independent(study, trial, name, distribution)

    def _mutate(
        self, study: Study, trial: FrozenTrial, name: str, distribution: BaseDistribution, parent_internal: float
    ) -> Any:
        """A value of ``distribution`` different from the parent's (given in internal representation)."""
        if isinstance(distribution, CategoricalDistribution):
            k = int(self._rng.randint(len(distribution.choices) - 1))
            return distribution.choices[k + (k >= int(parent_internal))]
        if isinstance(distribution, (IntDistribution, FloatDistribution)) and not distribution.log:
            step = distribution.step
            if step is not None:  # a uniform grid: any other grid point, uniformly
                n = int(round((distribution.high - distribution.low) / step)) + 1
                here = int(round((parent_internal - distribution.low) / step))
                k = int(self._rng.randint(n - 1))
                k += k >= here
                value = min(distribution.low + k * step, distribution.high)
                return int(value) if isinstance(distribution, IntDistribution) else float(value)
        # Continuous or log-scaled: redraw from the distribution's own prior until it differs.
        value = self._random(study, trial, name, distribution)
        for _ in range(_MAX_REDRAWS):
            if distribution.to_internal_repr(value) != parent_internal:
                break
            value = self._random(study, trial, name, distribution)
        return value


def _internal_if_fits(value: Any, old: BaseDistribution, new: BaseDistribution) -> float | None:
    """The parent's value in ``new``'s internal representation, or None if it cannot be copied."""
    try:
        check_distribution_compatibility(old, new)
    except ValueError:
        # Categoricals may legitimately change their choice set between trials; the value decides.
        if not (isinstance(old, CategoricalDistribution) and isinstance(new, CategoricalDistribution)):
            return None
    try:
        internal = new.to_internal_repr(value)
    except (ValueError, TypeError):
        return None
    return internal if new._contains(internal) else None


def _violation(trial: FrozenTrial) -> float:
    """Total constraint violation (sum of positive constraint values); 0 means feasible."""
    constraints = getattr(trial, "constraints", None)  # Optuna >= 5 merges both storage formats
    values = constraints.values() if isinstance(constraints, dict) else trial.system_attrs.get(_CONSTRAINTS_KEY)
    return float(sum(v for v in (values or ()) if v > 0))


def _tournament_winners(sample: Sequence[FrozenTrial], directions: Sequence[StudyDirection]) -> list[int]:
    """Indices of the sample's best members: the first non-domination front of the feasible ones,
    else (none feasible) the least violating ones."""
    violation = [_violation(t) for t in sample]
    feasible = [i for i, v in enumerate(violation) if v <= 0]
    if not feasible:
        least = min(violation)
        return [i for i, v in enumerate(violation) if v == least]
    signs = np.array([1.0 if d == StudyDirection.MINIMIZE else -1.0 for d in directions])
    loss = np.array([sample[i].values for i in feasible], dtype=float) * signs
    front = []
    for a in range(len(feasible)):
        dominated = np.any(np.all(loss <= loss[a], axis=1) & np.any(loss < loss[a], axis=1))
        if not dominated:
            front.append(feasible[a])
    return front

