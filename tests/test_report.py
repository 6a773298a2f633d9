"""hm2bp.report: the summary table and figure, per-epoch curves, the README's paper-vs-ours table and the rules side
by side, on hand-made run dirs."""

from __future__ import annotations

import json

import pytest

from hm2bp.paper import PAPER, PROTOCOL
from hm2bp.report import README_END, README_START, main


def _run(root, experiment: str, seed: int, accs: list[float], fingerprint: str = "0123456789ab",
         bptt: bool = False, seconds: float = 10.0, costs: dict | None = None) -> None:
    """A finished run: ``accs`` the test accuracy per epoch, ``seconds`` of training each; ``costs`` adds
    metrics.json's cost keys. The config's learning rate is the fingerprint mod 7."""
    run_dir = root / experiment / fingerprint / f"seed{seed}"
    run_dir.mkdir(parents=True)
    history = [{"epoch": e, "test_acc": a, "train_acc": a / 2, "train_seconds": seconds, "train_samples": 100}
               for e, a in enumerate(accs)]
    (run_dir / "history.json").write_text(json.dumps(history))
    metrics = {"experiment": experiment, "dataset": "digits", "model": "m", "seed": seed, "fingerprint": fingerprint,
               "config": {"trainer": {"lr": int(fingerprint, 16) % 7},
                          "model": {"bptt": {"slope": 25.0, "reset_grad": False} if bptt else None}},
               "test_acc": accs[-1], "best_test_acc": max(accs), "best_epoch": accs.index(max(accs)),
               "last10_test_acc": sum(accs[-10:]) / len(accs[-10:]), "epochs": len(accs),
               "train_seconds": seconds * len(accs), "train_samples_per_second": 100 / seconds, **(costs or {})}
    (run_dir / "metrics.json").write_text(json.dumps(metrics))


def _table(markdown: str) -> dict[str, list[dict[str, str]]]:
    """A markdown table's lines as ``{first cell: [{column: cell}, …]}`` (one entry per line with that first cell)."""
    lines = [[c.strip() for c in line.strip().strip("|").split("|")] for line in markdown.splitlines()
             if line.startswith("| ") and not line.startswith("|---")]
    out: dict[str, list[dict[str, str]]] = {}
    for cells in lines[1:]:
        out.setdefault(cells[0], []).append(dict(zip(lines[0], cells, strict=True)))
    return out


def _is_png(path) -> bool:
    """A PNG of some substance: a figure with axes, text and marks, not an empty canvas."""
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 15_000


def test_curves_and_readme_block(tmp_path, capsys):
    runs = tmp_path / "runs"
    _run(runs, "digits_mlp", 0, [0.5, 0.7, 0.9])
    _run(runs, "digits_mlp", 1, [0.3, 0.5, 0.7])
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\nbefore\n{README_START}\nold table\n{README_END}\nafter\n")
    main([str(runs), "--out", str(tmp_path / "report"), "--curves", str(tmp_path / "curves"),
          "--readme", str(readme)])
    assert capsys.readouterr().out.splitlines()[-2:] == [f"wrote {tmp_path / 'curves' / 'digits_mlp.csv'}",
                                                         f"wrote {readme}"]

    curve = (tmp_path / "curves" / "digits_mlp.csv").read_text().splitlines()
    assert curve[0] == "epoch,test_acc,test_acc_std,test_acc_min,test_acc_max,train_acc,train_acc_std," \
                       "train_seconds,n_seeds"
    # epoch 2: seeds at 90 and 70 %, each after 3 × 10 s of training
    assert [float(v) for v in curve[3].split(",")] == pytest.approx([2, 80.0, 14.142, 70.0, 90.0, 40.0, 7.071, 30.0,
                                                                     2], abs=1e-3)

    text = readme.read_text()
    assert text.startswith("# title\n\nbefore\n") and text.endswith(f"{README_END}\nafter\n")
    assert "old table" not in text
    rows = {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert set(PAPER) <= set(PROTOCOL) and set(PROTOCOL) | {"digits_mlp"} == set(rows) - {"experiment"}
    # ours: 2 seeds, best 80 ± 14.14, final 80 ± 14.14; measured 60 s of training; 5 seeds × 3 epochs × 100
    # samples at 10–13 ms/sample = 15–19.5 s
    assert "| digits_mlp | — | — | 2 | 80.00 ± 14.14 | 80.00 ± 14.14 | 60 s CPU, 2 seeds × 3 epochs | " \
           "3 × 100 | 0.00–0.01 |" in rows["digits_mlp"]
    assert "| mnist_mlp | 98.84 ± 0.02 | 98.93 | not run here |" in rows["mnist_mlp"]
    assert rows["mnist_mlp"].endswith("| 200 × 60,000 | 167–217 |")  # 6·10⁷ samples × 10–13 ms
    assert rows["mnist_cnn"].endswith("| 200 × 60,000 | 278–472 |")  # × 16.7–28.3 ms

    readme.write_text("no markers\n")
    with pytest.raises(SystemExit):
        main([str(runs), "--out", str(tmp_path / "elsewhere"), "--readme", str(readme)])
    assert f"{readme} has no {README_START} … {README_END} block to fill" in capsys.readouterr().err
    assert readme.read_text() == "no markers\n" and not (tmp_path / "elsewhere").exists()

    with pytest.raises(SystemExit):
        main([str(tmp_path / "nowhere")])
    assert capsys.readouterr().err.endswith(f"error: {tmp_path / 'nowhere'} does not exist\n")


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


def test_one_seed_and_short_runs_print_only_what_they_have(tmp_path, capsys):
    """A row of one seed shows its accuracies without a ``± 0.00`` spread; a row of fewer than 10 epochs has no
    last-10 mean (— and a note to read its final epoch); the report prints the path of every file it wrote; one rule
    only: no comparison."""
    runs, report = tmp_path / "runs", tmp_path / "report"
    _run(runs, "digits_mlp", 0, [0.5, 0.7, 0.9])  # one seed, 3 epochs
    for seed in (0, 1, 2):  # 3 seeds × 12 epochs: test accuracy 50 + epoch + seed %
        _run(runs, "mnist_mlp", seed, [0.5 + 0.01 * (e + seed) for e in range(12)], fingerprint="00000000000c")
    readme = tmp_path / "README.md"
    readme.write_text(f"{README_START}\n{README_END}\n")
    summary = main([str(runs), "--out", str(report), "--readme", str(readme)])
    printed = capsys.readouterr().out

    markdown = (report / "summary.md").read_text()
    [digits], [mnist] = _table(markdown)["digits_mlp"], _table(markdown)["mnist_mlp"]
    assert (digits["seeds"], digits["epochs"], digits["final %"], digits["best % (paper's metric)"]) == \
        ("1", "3", "90.00", "90.00")
    assert digits["last-10 %"] == "—" and summary["digits_mlp"]["last10_mean"] is None
    assert "fewer than 10 epochs: read its final % (the last epoch) instead" in markdown
    # last 10 epochs (2–11): 56.5, 57.5, 58.5 %; final: 61, 62, 63 %
    assert (mnist["last-10 %"], mnist["final %"]) == ("57.50 ± 1.00", "62.00 ± 1.00")
    assert summary["mnist_mlp"]["last10_mean"] == pytest.approx(57.5)
    assert "± 0.00" not in markdown and "± 0.00" not in printed
    assert "| digits_mlp | — | — | 1 | 90.00 | 90.00 |" in readme.read_text()

    files = [report / "summary.json", report / "summary.md", report / "summary.png", readme]
    assert printed.splitlines()[-len(files):] == [f"wrote {f}" for f in files]
    assert _is_png(report / "summary.png")
    assert not (report / "compare.md").exists() and not (report / "compare.png").exists()
    assert "HM2-BP vs BPTT" not in printed and "compare" not in printed

    main([str(runs / "mnist_mlp"), "--out", str(report)])  # 12 epochs everywhere: no note
    assert "fewer than 10 epochs" not in (report / "summary.md").read_text()


def test_rules_side_by_side(tmp_path, capsys):
    """A row by both rules (HM2-BP 3 seeds × 12 epochs, BPTT 1 seed × 4, at different learning rates):
    compare.md pairs them at the epochs both reached, with the training seconds to get there and each rule's costs;
    compare.png plots both. Rerun on one rule's runs, the same folder gets no comparison (the old one goes)."""
    runs, report = tmp_path / "runs", tmp_path / "report"
    for seed in (0, 1, 2):
        _run(runs, "digits_mlp", seed, [0.5 + 0.01 * (e + seed) for e in range(12)], fingerprint="00000000000a",
             seconds=2.0, costs={"seconds_per_epoch": 2.0, "peak_memory_mib": 100.0 + 10 * seed,
                                 "test_spikes_per_sample": 1000.0, "test_synops_per_sample": 50_000.0})
    _run(runs, "digits_mlp", 0, [0.4, 0.6, 0.7, 0.8], fingerprint="00000000000b", bptt=True, seconds=8.0,
         costs={"seconds_per_epoch": 8.0, "peak_memory_mib": 150.0, "test_spikes_per_sample": 1100.0,
                "test_synops_per_sample": 51_000.0})
    main([str(runs), "--out", str(report)])
    printed = capsys.readouterr().out

    compare = (report / "compare.md").read_text()
    hm2bp, bptt = _table(compare)["digits_mlp"]
    # after 4 epochs: HM2-BP 53, 54, 55 % after 4 × 2 s; BPTT 80 % after 4 × 8 s
    assert list(hm2bp.values()) == ["digits_mlp", "HM2-BP", "00000000000a (trainer.lr=3)", "3", "4", "54.00 ± 1.00",
                                    "8.0", "2.0", "110", "1,000", "50,000"]
    assert list(bptt.values()) == ["digits_mlp", "BPTT", "00000000000b (trainer.lr=4)", "1", "4", "80.00", "32.0",
                                   "8.0", "150", "1,100", "51,000"]
    assert "test % at equal epochs" in compare and compare in printed
    assert _is_png(report / "compare.png")
    assert printed.splitlines()[-2:] == [f"wrote {report / 'compare.md'}", f"wrote {report / 'compare.png'}"]

    main([str(runs / "digits_mlp" / "00000000000a"), "--out", str(report)])
    assert not (report / "compare.md").exists() and not (report / "compare.png").exists()
    assert "HM2-BP vs BPTT" not in capsys.readouterr().out


def test_a_sweep_by_both_rules_pairs_each_setting_with_its_own(tmp_path):
    """`-m rule=hm2bp,bptt trainer.lr=1,2`: four configs, two pairs, each learning rate with its own."""
    runs = tmp_path / "runs"
    for fingerprint, bptt in (("000000000001", False), ("000000000002", False), ("000000000008", True),
                              ("000000000009", True)):  # learning rates 1, 2, 1, 2
        _run(runs, "digits_mlp", 0, [0.5, 0.6], fingerprint=fingerprint, bptt=bptt)
    main([str(runs)])
    pairs = _table((runs / "compare.md").read_text())
    assert {row: [r["config"] for r in lines] for row, lines in pairs.items()} == {
        "digits_mlp-000000000001": ["000000000001 (trainer.lr=1)", "000000000008 (trainer.lr=1)"],
        "digits_mlp-000000000002": ["000000000002 (trainer.lr=2)", "000000000009 (trainer.lr=2)"]}
