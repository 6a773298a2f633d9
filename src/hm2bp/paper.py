"""The paper's reported accuracies (%), in one table, each with where it comes from (spec §9).

``verified`` is True only where the number was read from a primary source (the authors' logs or the abstract) or
corroborated by an independent table; the others are recollections of the paper's tables to be checked against the
PDF. Keys are experiment names (``conf/experiment/<name>.yaml``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PaperResult:
    mean: float | None  # mean over repeats, as the paper's "mean ± std"
    std: float | None
    best: float | None  # best over repeats (each run's best over epochs)
    source: str
    verified: bool


PAPER: dict[str, PaperResult] = {
    "mnist_mlp": PaperResult(98.84, 0.02, 98.93, "paper table (recalled); best = authors' log max, issue #9 "
                             "quotes 98.84", False),
    "nmnist_mlp": PaperResult(98.84, 0.02, 98.88, "best: abstract and authors' log; mean/std recalled", False),
    "mnist_cnn": PaperResult(99.42, 0.11, 99.49, "best: abstract and authors' log; mean corroborated by ISNN 2023 "
                             "Table 2", True),
    "emnist_mlp_400_400": PaperResult(84.31, 0.10, 84.43, "paper table (recalled, low confidence)", False),
    "ti46_alpha_mlp": PaperResult(89.36, 0.30, 89.92, "as cited in ST-RSBP; issue #9 quotes 90.50", False),
}
