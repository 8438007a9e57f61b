# The two commands of the README. Each creates .venv if needed, installs the project
# (a normal, non-editable install, so the packaged YAML is what gets tested), and runs.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test install install-test clean proof ablation bench bench-train search search-benchmark noise-floor reference calibrate

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/python -m pip install --quiet .

install-test: $(BIN)/python
	$(BIN)/python -m pip install --quiet ".[test]"

demo: install
	$(BIN)/edg tour --out runs/tour

test: install-test
	$(BIN)/pytest -q -p no:cacheprovider -n 2 --dist loadfile

clean:
	rm -rf $(VENV) runs build dist *.egg-info

# The learning proof: tiny-bifpn on the synthetic set, from scratch, on the CPU. Fails (exit 1)
# below mAP@0.5 = 0.5; results/proof.json (+ proof.png) keeps the metrics, curves, command,
# versions, date and machine, and is what the README cites.
proof: install
	$(BIN)/edg train tiny-bifpn --epochs 20 --out runs/proof --results results/proof.json --require 'map50>=0.5'

# The paper's ablation in miniature: FPN, PANet, NAS-FPN, BiFPN at equal scale.
# results/ablation.json keeps the table with the command, versions, date and machine.
ablation: install
	$(BIN)/edg ablation --graphs fpn panet nasfpn bifpn --model tiny-bifpn --epochs 20 --out runs/ablation \
		--results results/ablation.json --require 'map50>=0.3' --resume

# The CPU benchmark table of benchmarks/README.md (slow: two cold torch.compile builds each).
bench: install-test
	$(BIN)/python benchmarks/bench_effdet.py --model d0 --device cpu --threads 2 --batch 1 --reps 15 --compile \
		--out benchmarks/results-cpu-d0.json

# The training-step and data-pipeline tables of benchmarks/README.md (issue 13; 1 thread).
bench-train: install-test
	OMP_NUM_THREADS=1 PYTHONPATH=. $(BIN)/python benchmarks/bench_train_step.py --threads 1 \
		--out benchmarks/results-train-step-cpu-d0.json
	OMP_NUM_THREADS=1 PYTHONPATH=. $(BIN)/python benchmarks/bench_train_step.py --threads 1 --effdet-channels-last \
		--no-check --out benchmarks/results-train-step-cpu-d0-both-channels-last.json
	OMP_NUM_THREADS=1 PYTHONPATH=. $(BIN)/python benchmarks/bench_loader.py --threads 1 --out benchmarks/results-loader.json

# Architecture search on the CPU: a complete study of the BiFPN edge space on the proxy
# task, its front as YAML and plots, then the found graphs against FPN / PANet / BiFPN at
# matched FLOPs, re-trained with 3 seeds (the table of search/README.md).
search: install
	$(BIN)/edg search run bifpn_edges --trials 30 --sampler evolution --population 10 --seed 0 \
		--out runs/search --proxy-cache runs/proxy-cache
	$(BIN)/edg search best --out runs/search --top 3 -o runs/search/best
	$(BIN)/edg search plot --out runs/search
	$(BIN)/edg search compare --out runs/search --proxy-cache runs/proxy-cache --top 3 --seeds 1 2 3 \
		--results search/results/search-bifpn_edges.json

# Random search, TPE and regularized evolution at an equal budget, 3 seeds each.
search-benchmark: install
	$(BIN)/edg search benchmark bifpn_edges --samplers random tpe evolution --seeds 0 1 2 --trials 15 --population 5 \
		--proxy epochs=1 --out runs/search-benchmark --proxy-cache runs/proxy-cache \
		--results search/results/samplers-bifpn_edges.json

# Ground truth for search (docs/reference-table.md): the multiscale task, networks trained
# end-to-end with the reference schedule, one core per job, resumable job by job (run the
# same target again after a stop; several machines can share one --storage postgresql://...).
# noise-floor: the no-fusion neck, FPN, PANet and BiFPN, 5 seeds each; exit 1 if the gate fails.
noise-floor: install
	$(BIN)/edg search reference --floor-only --out reference/multiscale --workers 2 \
		--results search/results/noise-floor-multiscale.json

# reference: the floor plus NAS-FPN, GFPN and bifpn_edges' points and 14 sampled networks, 2 seeds each.
reference: noise-floor
	$(BIN)/edg search reference bifpn_edges --out reference/multiscale --workers 2 \
		--results search/results/reference-multiscale.json

# calibrate: the table as the journal holds it (the task generated into reference/multiscale/data
# if missing), then every registered proxy variant, the training-free scores and the FLOPs/params
# priors judged against it in one table (docs/search.md); picks the
# default proxy, exit 1 when no ranking clears the bar. Resumable: finished trials are
# logged in reference/multiscale/proxy/trials-*.jsonl (committed).
calibrate: install
	$(BIN)/edg search reference bifpn_edges --out reference/multiscale --report --no-gate \
		--results search/results/reference-multiscale.json
	$(BIN)/edg search calibrate search/results/reference-multiscale.json --cache reference/multiscale/proxy \
		--results search/results/calibrate-multiscale.json
