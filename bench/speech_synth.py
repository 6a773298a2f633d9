"""The speech path end to end on the offline espeak-ng corpus: ``python src/run.py experiment=spoken_synth_mlp``
(78-400-26, T = 1000, batch 32, Adam 1e-2, 20 epochs) per seed, through the experiment app exactly as a user runs it.

Writes bench/results/speech_synth.json and the ``speech-synth`` section of BENCHMARKS.md.

    python bench/speech_synth.py [--seeds 0] [--epochs 20]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import RESULTS, ROOT, machine, update_section
from hm2bp.io import atomic_write_json


def run_seed(seed: int, epochs: int, out: Path) -> dict:
    env = {**os.environ, "WANDB_MODE": "offline"}
    subprocess.run([sys.executable, str(ROOT / "src" / "run.py"), "experiment=spoken_synth_mlp", f"seed={seed}",
                    f"trainer.max_epochs={epochs}", "logger=none", "trainer.progress_bar=false",
                    f"output_root={out}", f"data_dir={ROOT / 'data'}"], check=True, env=env, cwd=ROOT)
    return json.loads((out / "spoken_synth_mlp" / f"seed{seed}" / "metrics.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--epochs", type=int, default=20)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        runs = [run_seed(seed, args.epochs, Path(tmp)) for seed in args.seeds]
    for r in runs:
        print(f"seed {r['seed']}: final {r['test_acc']:.4f} best {r['best_test_acc']:.4f} "
              f"{r['train_samples_per_second']:.0f} samples/s", flush=True)
    finals = [100 * r["test_acc"] for r in runs]
    mean, std = statistics.mean(finals), (statistics.stdev(finals) if len(finals) > 1 else 0.0)
    atomic_write_json(RESULTS / "speech_synth.json", {"benchmark": "speech_synth", "epochs": args.epochs,
                                                      "machine": machine(), "runs": runs})
    rows = "\n".join(f"| {r['seed']} | {100 * r['test_acc']:.2f} | {100 * r['best_test_acc']:.2f} | "
                     f"{100 * r['last10_test_acc']:.2f} | {r['train_samples_per_second']:.0f} |" for r in runs)
    update_section("speech-synth", f"""## Speech path on the offline spoken-letter corpus

`python bench/speech_synth.py` — `python src/run.py experiment=spoken_synth_mlp` ({args.epochs} epochs): 26 letters
spoken by eSpeak NG (espeakng-loader), 6 training voices / 2 test voices (speaker-independent, 624 / 208 utterances),
the TI46 front
end (12.5 kHz, Lyon ear 78 channels, BSA, T = 1000), 78-400-26, batch 32, Adam 1e-2. Chance is 3.85 %.

| seed | final test acc % | best test acc % | last-10 test acc % | train samples/s |
|---|---|---|---|---|
{rows}
| **mean** | **{mean:.2f} ± {std:.2f}** | | | |
""")


if __name__ == "__main__":
    main()
