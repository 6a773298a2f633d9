"""scikit-learn's ``load_digits``: 1,797 real 8×8 handwritten digits, bundled with scikit-learn (works offline)."""

from __future__ import annotations

import torch

DIGITS_PIXEL_MAX = 16.0  # load_digits pixels are 0..16
TEST_FRACTION = 0.2  # fixed stratified 80/20 split with random_state 0 (issue: benchmark protocol)
SPLIT_SEED = 0


def load_digits_split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x_train, y_train, x_test, y_test)``; pixels rescaled to [0, 255] (float32), labels int64."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=TEST_FRACTION, stratify=y, random_state=SPLIT_SEED)

    def px(a):
        return torch.as_tensor(a * (255.0 / DIGITS_PIXEL_MAX), dtype=torch.float32)

    return px(x_tr), torch.as_tensor(y_tr), px(x_te), torch.as_tensor(y_te)
