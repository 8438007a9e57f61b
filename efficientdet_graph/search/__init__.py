"""Stage 10: architecture search over declared spaces (Optuna studies, proxy task, results as YAML).

Nothing here imports Optuna or torch until a study is run: ``load_space`` and
``sample`` work with the spec and graph stages alone.
"""

from .mapping import Candidate, point_candidate, point_values, sample
from .params import Choice, FloatRange, IntRange, fixed_ask, random_ask
from .space import SearchSpace, SpaceSpec, load_space, load_space_text

_LAZY = {
    "candidate_cost": "efficientdet_graph.search.cost",
    "CandidateCost": "efficientdet_graph.search.cost",
    "StudyConfig": "efficientdet_graph.search.study",
    "run": "efficientdet_graph.search.study",
    "run_worker": "efficientdet_graph.search.study",
    "open_study": "efficientdet_graph.search.study",
    "load_study": "efficientdet_graph.search.study",
    "best_trials": "efficientdet_graph.search.study",
    "summary": "efficientdet_graph.search.study",
    "write_best": "efficientdet_graph.search.report",
    "plot_study": "efficientdet_graph.search.report",
    "hypervolume": "efficientdet_graph.search.report",
    "RegularizedEvolutionSampler": "efficientdet_graph.search.evolution",
    "ProxyConfig": "efficientdet_graph.search.proxy",
    "ProxyTask": "efficientdet_graph.search.proxy",
    "ProxyResult": "efficientdet_graph.search.proxy",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'efficientdet_graph.search' has no attribute {name!r}")


__all__ = sorted(["Candidate", "Choice", "FloatRange", "IntRange", "SearchSpace", "SpaceSpec", "fixed_ask",
                  "load_space", "load_space_text", "point_candidate", "point_values", "random_ask", "sample",
                  *_LAZY])
