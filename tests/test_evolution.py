"""Regularized evolution (Real et al. 2019) as an Optuna sampler.

The rules are checked from what the study stored (trial states, completion times, values,
constraints) rather than from the sampler's internals; tournament winners are checked against
Optuna's own non-dominated sorting with constraint penalties.
"""

from __future__ import annotations

import numpy as np
import optuna
import pytest
from optuna.study._multi_objective import _fast_non_domination_rank
from optuna.trial import TrialState

from efficientdet_graph.search.evolution import (
    MUTATED_KEY,
    PARENT_KEY,
    TOURNAMENT_KEY,
    RegularizedEvolutionSampler,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)

CHOICES = ["a", "b", "c"]


def categorical_objective(n_params: int = 6, prune_every: int | None = None):
    def objective(trial: optuna.Trial) -> float:
        xs = [trial.suggest_categorical(f"p{i}", CHOICES) for i in range(n_params)]
        if prune_every and trial.number % prune_every == prune_every - 1:
            raise optuna.TrialPruned()
        # Distinct values for distinct parameter sets, so "best" is rarely a tie.
        return float(sum(CHOICES.index(x) * 3**i for i, x in enumerate(xs)))

    return objective


def children(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.trials if t.system_attrs.get(PARENT_KEY) is not None]


def differing(a: dict, b: dict) -> set[str]:
    return {k for k in a.keys() | b.keys() if a.get(k, object()) != b.get(k, object())}


def loss_and_penalty(trials, directions):
    signs = np.array([1.0 if d == optuna.study.StudyDirection.MINIMIZE else -1.0 for d in directions])
    loss = np.array([t.values for t in trials], dtype=float) * signs
    penalty = np.array([sum(max(c, 0.0) for c in t.system_attrs.get("constraints") or ()) for t in trials])
    return loss, penalty


def assert_parent_wins_its_tournament(study: optuna.Study) -> int:
    """Every child's parent is in the first front (Optuna's constrained non-dominated sort) of its tournament."""
    by_number = {t.number: t for t in study.trials}
    checked = 0
    for child in children(study):
        sample = [by_number[n] for n in child.system_attrs[TOURNAMENT_KEY]]
        parent = by_number[child.system_attrs[PARENT_KEY]]
        assert parent in sample
        loss, penalty = loss_and_penalty(sample, study.directions)
        has_constraints = any("constraints" in t.system_attrs for t in sample)
        ranks = _fast_non_domination_rank(loss, penalty=penalty if has_constraints else None)
        assert ranks[sample.index(parent)] == ranks.min(), (child.number, parent.number)
        checked += 1
    return checked


@pytest.mark.parametrize(
    "kwargs",
    [
        {"population_size": 1, "sample_size": 1},
        {"population_size": 0},
        {"population_size": 10, "sample_size": 0},
        {"population_size": 10, "sample_size": 11},
        {"population_size": 2.5},
        {"population_size": 10, "sample_size": True},
    ],
)
def test_bad_arguments_are_clear_value_errors(kwargs):
    with pytest.raises(ValueError, match="population_size|sample_size"):
        RegularizedEvolutionSampler(**kwargs)


def test_arguments_are_keyword_only():
    with pytest.raises(TypeError):
        RegularizedEvolutionSampler(10, 3)  # type: ignore[misc]


def test_warm_up_is_the_random_sampler_then_every_trial_has_a_parent():
    sampler = RegularizedEvolutionSampler(population_size=8, sample_size=3, seed=3)
    study = optuna.create_study(sampler=sampler)
    study.optimize(categorical_objective(), n_trials=30)
    reference = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    reference.optimize(categorical_objective(), n_trials=8)
    assert [t.params for t in study.trials[:8]] == [t.params for t in reference.trials]
    assert all(t.system_attrs[PARENT_KEY] is None for t in study.trials[:8])
    assert all(isinstance(t.system_attrs[PARENT_KEY], int) for t in study.trials[8:])


def test_parent_comes_from_the_population_and_differs_in_exactly_one_parameter():
    population_size = 10
    sampler = RegularizedEvolutionSampler(population_size=population_size, sample_size=3, seed=0)
    study = optuna.create_study(sampler=sampler)
    study.optimize(categorical_objective(prune_every=7), n_trials=120)
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    by_number = {t.number: t for t in study.trials}
    kids = children(study)
    assert len(kids) > 80
    for child in kids:
        # The population when the child started: the P most recently completed COMPLETE trials.
        done_before = sorted(
            (t for t in complete if t.datetime_complete <= child.datetime_start),
            key=lambda t: (t.datetime_complete, t.number),
        )
        population = {t.number for t in done_before[-population_size:]}
        assert set(child.system_attrs[TOURNAMENT_KEY]) <= population
        assert len(set(child.system_attrs[TOURNAMENT_KEY])) == 3
        parent = by_number[child.system_attrs[PARENT_KEY]]
        assert parent.number in population and parent.state == TrialState.COMPLETE
        changed = differing(child.params, parent.params)
        assert changed == {child.system_attrs[MUTATED_KEY]}
    assert assert_parent_wins_its_tournament(study) == len(kids)


def test_oldest_member_leaves_even_when_it_is_the_best():
    """Aging: trial 0 is the best ever seen, but it is not a parent once P newer trials completed."""
    population_size = 5

    def objective(trial):
        score = categorical_objective()(trial)
        return 1e9 if trial.number == 0 else score  # maximized; nothing later reaches trial 0

    sampler = RegularizedEvolutionSampler(population_size=population_size, sample_size=population_size, seed=1)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.optimize(objective, n_trials=40)
    parents = {t.number: t.system_attrs[PARENT_KEY] for t in children(study)}
    # Trial 5 sees trials 0..4, the whole population is the tournament, so the best (0) wins;
    # from trial 6 on, trial 0 has aged out although it is still the study's best trial.
    assert parents[population_size] == 0
    assert all(p != 0 for n, p in parents.items() if n > population_size)
    assert study.best_trial.number == 0


@pytest.mark.parametrize("direction", ["minimize", "maximize"])
def test_full_tournament_always_picks_the_population_best(direction):
    population_size = 6
    sampler = RegularizedEvolutionSampler(population_size=population_size, sample_size=population_size, seed=2)
    study = optuna.create_study(direction=direction, sampler=sampler)
    study.optimize(categorical_objective(), n_trials=50)
    pick = min if direction == "minimize" else max
    by_number = {t.number: t for t in study.trials}
    for child in children(study):
        population = [t for t in study.trials if t.number < child.number][-population_size:]
        assert by_number[child.system_attrs[PARENT_KEY]].value == pick(t.value for t in population)


def hidden_target_objective(target):
    def objective(trial):
        return sum(trial.suggest_categorical(f"p{i}", [0, 1, 2, 3]) == int(t) for i, t in enumerate(target))

    return objective


def test_beats_random_search_on_a_toy_problem_with_a_known_optimum():
    """12 four-way choices, score = matches with a hidden target (optimum 12), 250 trials each."""
    evolution, random = [], []
    for seed in range(3):
        objective = hidden_target_objective(np.random.RandomState(100 + seed).randint(4, size=12))
        for sampler, bests in (
            (RegularizedEvolutionSampler(population_size=20, sample_size=5, seed=seed), evolution),
            (optuna.samplers.RandomSampler(seed=seed), random),
        ):
            study = optuna.create_study(direction="maximize", sampler=sampler)
            study.optimize(objective, n_trials=250)
            bests.append(study.best_value)
    # Random search's best of 250 is ~8 (binomial(12, 1/4) tail); evolution climbs close to 12.
    assert np.mean(evolution) > np.mean(random) + 1.5, (evolution, random)
    assert np.mean(evolution) >= 0.8 * 12, evolution


def test_multi_objective_tournament_uses_pareto_fronts():
    def objective(trial):
        x = [trial.suggest_int(f"x{i}", 0, 4) for i in range(4)]
        return float(sum(x)), float(sum((4 - v) ** 2 for v in x[:2]) + x[2] * x[3])

    sampler = RegularizedEvolutionSampler(population_size=10, sample_size=4, seed=0)
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)
    study.optimize(objective, n_trials=80)
    assert len(study.best_trials) > 0
    assert assert_parent_wins_its_tournament(study) == 70


def test_conditional_parameters():
    def objective(trial):
        kind = trial.suggest_categorical("kind", ["conv", "pool", "skip"])
        if kind == "conv":
            k = trial.suggest_int("kernel", 1, 7, step=2)
            width = trial.suggest_float("width", 0.25, 2.0, log=True)
            return k * width
        if kind == "pool":
            return float(trial.suggest_categorical("pool", ["max", "avg"]) == "max")
        return 3.0

    sampler = RegularizedEvolutionSampler(population_size=6, sample_size=2, seed=0)
    study = optuna.create_study(sampler=sampler)
    study.optimize(objective, n_trials=80)
    expected = {"conv": {"kind", "kernel", "width"}, "pool": {"kind", "pool"}, "skip": {"kind"}}
    by_number = {t.number: t for t in study.trials}
    same_branch = 0
    for t in study.trials:
        assert t.state == TrialState.COMPLETE
        assert set(t.params) == expected[t.params["kind"]]
        parent_number = t.system_attrs[PARENT_KEY]
        if parent_number is not None and by_number[parent_number].params["kind"] == t.params["kind"]:
            # Same branch: "kind" was not the mutated parameter, so exactly one other one changed.
            assert differing(t.params, by_number[parent_number].params) == {t.system_attrs[MUTATED_KEY]}
            same_branch += 1
    assert same_branch > 20


def test_constraints_feasible_beats_infeasible():
    def objective(trial):
        x = [trial.suggest_int(f"x{i}", 0, 3) for i in range(5)]
        trial.set_user_attr("violation", float(x[0] + x[1] - 3))  # feasible when x0 + x1 <= 3
        return float(sum(x))  # maximized: the largest values are infeasible

    sampler = RegularizedEvolutionSampler(
        population_size=8, sample_size=4, seed=0, constraints_func=lambda t: [t.user_attrs["violation"]]
    )
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.optimize(objective, n_trials=100)
    assert all(t.system_attrs["constraints"] == (t.user_attrs["violation"],) for t in study.trials)
    assert assert_parent_wins_its_tournament(study) == 92
    by_number = {t.number: t for t in study.trials}
    mixed = 0
    for child in children(study):
        sample = [by_number[n] for n in child.system_attrs[TOURNAMENT_KEY]]
        parent = by_number[child.system_attrs[PARENT_KEY]]
        feasible = [t for t in sample if t.user_attrs["violation"] <= 0]
        if feasible:
            assert parent.user_attrs["violation"] <= 0
            mixed += len(feasible) < len(sample)
        else:
            assert parent.user_attrs["violation"] == min(t.user_attrs["violation"] for t in sample)
    assert mixed > 0  # the rule was actually exercised
    best = study.best_trial
    assert best.user_attrs["violation"] <= 0 and best.value == 3 + 3 * 3  # x0 + x1 = 3, x2..x4 = 3


def test_numeric_mutations_stay_in_their_distributions_and_change_one_value():
    ranges = {
        "f": optuna.distributions.FloatDistribution(-1.0, 1.0),
        "flog": optuna.distributions.FloatDistribution(1e-4, 1.0, log=True),
        "fstep": optuna.distributions.FloatDistribution(0.0, 1.0, step=0.25),
        "i": optuna.distributions.IntDistribution(0, 1),
        "ilog": optuna.distributions.IntDistribution(1, 4, log=True),
        "istep": optuna.distributions.IntDistribution(0, 9, step=3),
        "fixed": optuna.distributions.IntDistribution(5, 5),
    }

    def objective(trial):
        return (
            trial.suggest_float("f", -1.0, 1.0)
            + trial.suggest_float("flog", 1e-4, 1.0, log=True)
            + trial.suggest_float("fstep", 0.0, 1.0, step=0.25)
            + trial.suggest_int("i", 0, 1)
            + trial.suggest_int("ilog", 1, 4, log=True)
            + trial.suggest_int("istep", 0, 9, step=3)
            + trial.suggest_int("fixed", 5, 5)
        )

    sampler = RegularizedEvolutionSampler(population_size=4, sample_size=2, seed=5)
    study = optuna.create_study(sampler=sampler)
    study.optimize(objective, n_trials=150)
    by_number = {t.number: t for t in study.trials}
    mutated = set()
    for t in study.trials:
        assert t.distributions == ranges
        for name, dist in ranges.items():
            assert dist._contains(dist.to_internal_repr(t.params[name])), (name, t.params[name])
        if t.system_attrs[PARENT_KEY] is not None:
            changed = differing(t.params, by_number[t.system_attrs[PARENT_KEY]].params)
            assert changed == {t.system_attrs[MUTATED_KEY]}
            mutated |= changed
    assert mutated == set(ranges) - {"fixed"}


def test_same_seed_same_trials_and_other_seed_other_trials():
    def run(seed):
        study = optuna.create_study(sampler=RegularizedEvolutionSampler(population_size=5, sample_size=2, seed=seed))
        study.optimize(categorical_objective(), n_trials=40)
        return [t.params for t in study.trials]

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_enqueued_trials_keep_their_parameters():
    sampler = RegularizedEvolutionSampler(population_size=5, sample_size=2, seed=0)
    study = optuna.create_study(sampler=sampler)
    study.optimize(categorical_objective(), n_trials=10)
    study.enqueue_trial({f"p{i}": "c" for i in range(6)})
    study.enqueue_trial({"p0": "b"})  # partial: the rest follows the parent, the mutation avoids p0
    study.optimize(categorical_objective(), n_trials=2)
    full, partial = study.trials[10], study.trials[11]
    assert full.params == {f"p{i}": "c" for i in range(6)}
    assert partial.params["p0"] == "b"
    assert partial.system_attrs[MUTATED_KEY] != "p0"
    parent = study.trials[partial.system_attrs[PARENT_KEY]]
    assert differing(partial.params, parent.params) - {"p0"} == {partial.system_attrs[MUTATED_KEY]}


def test_journal_storage_shared_by_two_workers_and_resumed(tmp_path):
    path = str(tmp_path / "journal.log")

    def storage():
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(path))

    study = optuna.create_study(
        study_name="evo", storage=storage(), sampler=RegularizedEvolutionSampler(population_size=6, sample_size=3)
    )
    study.optimize(categorical_objective(), n_trials=30, n_jobs=2)
    # Another process would open the journal afresh, with its own sampler.
    resumed = optuna.load_study(
        study_name="evo", storage=storage(), sampler=RegularizedEvolutionSampler(population_size=6, sample_size=3)
    )
    resumed.optimize(categorical_objective(), n_trials=20)
    trials = optuna.load_study(study_name="evo", storage=storage()).trials
    assert len(trials) == 50 and all(t.state == TrialState.COMPLETE for t in trials)
    by_number = {t.number: t for t in trials}
    kids = [t for t in trials if t.system_attrs.get(PARENT_KEY) is not None]
    assert len(kids) >= 40
    for child in kids:
        parent = by_number[child.system_attrs[PARENT_KEY]]
        assert parent.state == TrialState.COMPLETE and parent.datetime_complete <= child.datetime_complete
        assert differing(child.params, parent.params) == {child.system_attrs[MUTATED_KEY]}


def test_threads_share_one_sampler():
    sampler = RegularizedEvolutionSampler(population_size=5, sample_size=2, seed=0)
    study = optuna.create_study(sampler=sampler)
    study.optimize(categorical_objective(), n_trials=30, n_jobs=3)
    assert len(study.trials) == 30 and all(t.state == TrialState.COMPLETE for t in study.trials)
    sampler.reseed_rng()
    study.optimize(categorical_objective(), n_trials=5)
    assert len(study.trials) == 35


def test_a_trial_keeps_its_parent_when_another_sampler_instance_continues_it():
    """The decision lives in the trial's system attributes, not in the sampler object."""
    study = optuna.create_study(sampler=RegularizedEvolutionSampler(population_size=5, sample_size=2, seed=0))
    study.optimize(categorical_objective(), n_trials=10)
    trial = study.ask()
    trial.suggest_categorical("p0", CHOICES)
    study.sampler = RegularizedEvolutionSampler(population_size=5, sample_size=2, seed=99)  # "another process"
    study.tell(trial, categorical_objective()(trial))
    child = study.trials[-1]
    parent = study.trials[child.system_attrs[PARENT_KEY]]
    assert differing(child.params, parent.params) == {child.system_attrs[MUTATED_KEY]}
