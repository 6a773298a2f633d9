"""wandb sweep specs (sweeps/*.yaml): every run they would launch composes with Hydra and passes validation."""

from __future__ import annotations

import itertools
import math
import random
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

from conftest import nonempty
from hm2bp.app.config import validate
from hm2bp.paper import PROTOCOL

ROOT = Path(__file__).resolve().parent.parent
SPECS = nonempty(sorted((ROOT / "sweeps").glob("*.yaml")), "sweep specs")
COMMAND = ["${env}", "python", "${program}", "${args_no_hyphens}"]
BAYES_SAMPLES = 12


def _sample(name: str, spec: dict, rng: random.Random) -> object:
    """One draw from a wandb parameter spec (the distributions our specs use; anything else fails the test)."""
    if "value" in spec:
        return spec["value"]
    if "values" in spec:
        return rng.choice(spec["values"])
    kind = spec.get("distribution")
    if kind == "uniform":
        return rng.uniform(spec["min"], spec["max"])
    if kind == "int_uniform":
        return rng.randint(spec["min"], spec["max"])
    if kind == "log_uniform_values":
        return math.exp(rng.uniform(math.log(spec["min"]), math.log(spec["max"])))
    raise AssertionError(f"{name}: distribution {kind!r} is not covered by this test")


def _combinations(spec: dict) -> list[dict]:
    params = spec["parameters"]
    if spec["method"] == "grid":
        names = list(params)
        choices = [[p["value"]] if "value" in p else p["values"] for p in params.values()]
        return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*choices)]
    rng = random.Random(0)
    return [{name: _sample(name, p, rng) for name, p in params.items()} for _ in range(BAYES_SAMPLES)]


def _argv(spec: dict, values: dict) -> list[str]:
    """The command the wandb agent runs for one parameter combination (its macro expansion, wandb_agent.py)."""
    macros = create_sweep_command_args({"args": {k: {"value": v} for k, v in values.items()}})
    macros.update(env=["/usr/bin/env"], interpreter=["python"], program=[spec["program"]])
    argv = []
    for chunk in spec["command"]:
        argv += macros.get(chunk[2:-1], []) if chunk.startswith("${") and chunk.endswith("}") else [chunk]
    return argv


def _paper_experiments() -> list[str]:
    return yaml.safe_load((ROOT / "profiles" / "profile" / "paper.yaml").read_text())["experiments"]


def test_one_seeds_grid_over_every_paper_experiment_and_a_digits_search():
    assert {p.stem for p in SPECS} == {"seeds", "digits_bayes"}
    seeds = yaml.safe_load((ROOT / "sweeps" / "seeds.yaml").read_text())
    rows = seeds["parameters"]["experiment"]["values"]
    assert rows == _paper_experiments() and sorted(rows) == sorted(PROTOCOL)
    assert all((ROOT / "conf" / "experiment" / f"{e}.yaml").exists() for e in rows)


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_every_sweep_run_composes_and_validates(path, monkeypatch):
    spec = yaml.safe_load(path.read_text())
    assert spec["program"] == "src/run.py" and (ROOT / spec["program"]).exists()
    assert spec["command"] == COMMAND
    assert spec["method"] in ("grid", "bayes")
    monkeypatch.setenv("WANDB_RUN_ID", "testrun")  # the agent sets it for every run it starts
    runs = _combinations(spec)
    if path.stem == "seeds":  # every experiment × seeds 0–4
        assert spec["method"] == "grid"
        per_experiment: dict[str, list[int]] = {}
        for r in runs:
            per_experiment.setdefault(r["experiment"], []).append(r["seed"])
        assert all(sorted(s) == [0, 1, 2, 3, 4] for s in per_experiment.values())
    dirs = set()
    for values in runs:
        argv = _argv(spec, values)
        assert argv[:3] == ["/usr/bin/env", "python", "src/run.py"]
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose(config_name="config", overrides=argv[3:], return_hydra_config=True)
        validate(cfg)
        for key, value in values.items():
            expected = value.replace("${oc.env:WANDB_RUN_ID}", "testrun") if isinstance(value, str) else value
            choices = cfg.hydra.runtime.choices  # config groups (experiment=…) are choices, not keys
            assert (choices[key] if key in choices else OmegaConf.select(cfg, key)) == expected, key
        dirs.add(cfg.hydra.run.dir)
    if spec["method"] == "grid":
        assert len(dirs) == len(runs)  # no run skips another as finished
    else:
        assert all(d.startswith("outputs/digits_bayes/testrun/digits-mlp64-800-10/") for d in dirs)  # per wandb run
