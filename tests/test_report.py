"""hm2bp.report: per-epoch curves and the README's paper-vs-ours table, on hand-made run dirs."""

from __future__ import annotations

import json

import pytest

from hm2bp.paper import PAPER, PROTOCOL
from hm2bp.report import README_END, README_START, main


def _run(root, experiment: str, seed: int, accs: list[float], fingerprint: str = "0123456789ab",
         bptt: bool = False) -> None:
    run_dir = root / experiment / fingerprint / f"seed{seed}"
    run_dir.mkdir(parents=True)
    history = [{"epoch": e, "test_acc": a, "train_acc": a / 2, "train_seconds": 10.0, "train_samples": 100}
               for e, a in enumerate(accs)]
    (run_dir / "history.json").write_text(json.dumps(history))
    metrics = {"experiment": experiment, "dataset": "digits", "model": "m", "seed": seed, "fingerprint": fingerprint,
               "config": {"trainer": {"lr": int(fingerprint, 16) % 7},
                          "model": {"bptt": {"slope": 25.0, "reset_grad": False} if bptt else None}},
               "test_acc": accs[-1],
               "best_test_acc": max(accs), "best_epoch": accs.index(max(accs)), "last10_test_acc": accs[-1],
               "epochs": len(accs), "train_seconds": 10.0 * len(accs), "train_samples_per_second": 10.0}
    (run_dir / "metrics.json").write_text(json.dumps(metrics))


def test_curves_and_readme_block(tmp_path, capsys):
    runs = tmp_path / "runs"
    _run(runs, "digits_mlp", 0, [0.5, 0.7, 0.9])
    _run(runs, "digits_mlp", 1, [0.3, 0.5, 0.7])
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\nbefore\n{README_START}\nold table\n{README_END}\nafter\n")
    main([str(runs), "--out", str(tmp_path / "report"), "--curves", str(tmp_path / "curves"),
          "--readme", str(readme)])

    curve = (tmp_path / "curves" / "digits_mlp.csv").read_text().splitlines()
    assert curve[0] == "epoch,test_acc,test_acc_std,train_acc,train_acc_std,n_seeds"
    assert [float(v) for v in curve[3].split(",")[:2]] == [2, pytest.approx(80.0)]

    text = readme.read_text()
    assert text.startswith("# title\n\nbefore\n") and text.endswith(f"{README_END}\nafter\n")
    assert "old table" not in text
    rows = {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert set(PAPER) <= set(PROTOCOL) and set(PROTOCOL) | {"digits_mlp"} == set(rows) - {"experiment"}
    # ours: 2 seeds, best 80 ± 14.14, final 80 ± 14.14; measured 60 s of training; 5 seeds × 3 epochs × 100
    # samples at 10–13 ms/sample = 15–19.5 s
    assert "| digits_mlp | — | — | 2 | 80.00 ± 14.14 | 80.00 ± 14.14 | 0.02 h CPU, 2 seeds × 3 epochs | " \
           "3 × 100 | 0.00–0.01 |" in rows["digits_mlp"]
    assert "| mnist_mlp | 98.84 ± 0.02 | 98.93 | not run here |" in rows["mnist_mlp"]
    assert rows["mnist_mlp"].endswith("| 200 × 60,000 | 167–217 |")  # 6·10⁷ samples × 10–13 ms
    assert rows["mnist_cnn"].endswith("| 200 × 60,000 | 278–472 |")  # × 16.7–28.3 ms

    readme.write_text("no markers\n")
    with pytest.raises(SystemExit):
        main([str(runs), "--out", str(tmp_path / "elsewhere"), "--readme", str(readme)])
    assert f"{readme} has no {README_START} … {README_END} block to fill" in capsys.readouterr().err
    assert readme.read_text() == "no markers\n" and not (tmp_path / "elsewhere").exists()


def test_incomplete_metrics_are_ignored_and_configs_get_their_own_rows(tmp_path):
    runs = tmp_path / "runs"
    _run(runs, "digits_mlp", 0, [0.5, 0.9], fingerprint="00000000000a")
    _run(runs, "digits_mlp", 1, [0.5, 0.7], fingerprint="00000000000a")
    _run(runs, "digits_mlp", 0, [0.2, 0.4], fingerprint="00000000000b")
    incomplete = runs / "old" / "seed0"  # no fingerprint: not a finished run's file
    incomplete.mkdir(parents=True)
    (incomplete / "metrics.json").write_text(json.dumps({"experiment": "old", "seed": 0, "test_acc": 0.5}))
    summary = main([str(runs)])
    assert sorted(summary) == ["digits_mlp-00000000000a", "digits_mlp-00000000000b"]
    a, b = summary["digits_mlp-00000000000a"], summary["digits_mlp-00000000000b"]
    assert (a["n_seeds"], b["n_seeds"]) == (2, 1) and a["final_mean"] == pytest.approx(80.0)
    assert (a["settings"], b["settings"]) == ("trainer.lr=3", "trainer.lr=4")


def test_equivalent_commands_sharing_a_folder_make_one_row(tmp_path):
    """`dataset=emnist` and `experiment=emnist_mlp_400_400` are one config (one fingerprint, one folder) whose seeds
    carry two names: one row, under the paper row's name; outside the paper, under the most frequent name."""
    runs = tmp_path / "runs"
    _run(runs, "emnist-mlp784-400-400-47", 0, [0.5, 0.8], fingerprint="00000000000e")
    _run(runs, "emnist-mlp784-400-400-47", 1, [0.5, 0.8], fingerprint="00000000000e")
    _run(runs, "emnist_mlp_400_400", 2, [0.5, 0.9], fingerprint="00000000000e")
    _run(runs, "digits-mlp64-800-10", 0, [0.5, 0.9])
    _run(runs, "digits_mlp", 1, [0.5, 0.9])
    _run(runs, "digits_mlp", 2, [0.5, 0.9])
    summary = main([str(runs)])
    assert sorted(summary) == ["digits_mlp", "emnist_mlp_400_400"]
    assert summary["emnist_mlp_400_400"]["seeds"] == [0, 1, 2] and summary["digits_mlp"]["seeds"] == [0, 1, 2]
    assert summary["emnist_mlp_400_400"]["paper"] == vars(PAPER["emnist_mlp_400_400"])


def test_every_test_the_docs_name_exists():
    """README and docs/ rows (docs/reliability.md above all) cite `tests/<file>.py::<test>` (later cells `::<test>`
    of the same file): each must exist."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    cited: list[tuple[str, str, str]] = []
    pages = [root / "README.md", *sorted((root / "docs").rglob("*.md"))]
    for line in (line for page in pages for line in page.read_text().splitlines()):
        current = None
        for file, name, star in re.findall(r"`(tests/test_\w+\.py)?::(\w+)(\*?)", line):
            current = file or current
            assert current, f"README cites ::{name} without a file: {line}"
            cited.append((current, name, star))
    assert len(cited) > 20
    for file, name, star in cited:  # `name*` cites every test starting with name
        tail = r"\w*\(" if star else r"\("
        pattern = rf"^def {name}{tail}"
        assert re.search(pattern, (root / file).read_text(), re.M), f"{file}::{name}{star} is cited but missing"


def test_rules_get_their_own_rows(tmp_path):
    """`-m rule=hm2bp,bptt`: one config per rule, one row each, BPTT's marked and without the paper's (HM2-BP's)
    numbers beside it."""
    runs = tmp_path / "runs"
    for seed in (0, 1):
        _run(runs, "mnist_mlp", seed, [0.5, 0.9], fingerprint="00000000000c")
        _run(runs, "mnist_mlp", seed, [0.4, 0.8], fingerprint="00000000000d", bptt=True)
    summary = main([str(runs)])
    assert sorted(summary) == ["mnist_mlp", "mnist_mlp+bptt"]
    assert (summary["mnist_mlp"]["rule"], summary["mnist_mlp+bptt"]["rule"]) == ("hm2bp", "bptt")
    assert summary["mnist_mlp"]["paper"] is not None and summary["mnist_mlp+bptt"]["paper"] is None
    assert summary["mnist_mlp+bptt"]["final_mean"] == pytest.approx(80.0)
    table = (runs / "summary.md").read_text()
    assert "| mnist_mlp+bptt | bptt | 00000000000d" in table and "| mnist_mlp | hm2bp | 00000000000c" in table
