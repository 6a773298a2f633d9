"""The app's config composed as ``src/run.py`` composes it, for the tests that need Hydra (kept out of conftest.py,
which the GPU machine's test run imports without Hydra)."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir

from hm2bp.app import schema


def compose_app(overrides: list[str], hydra_config: bool = False):
    """The app's config (``conf/config.yaml``) composed with ``overrides``: the engine's default nodes
    (``engine/…``, :mod:`hm2bp.app.schema`) registered first, so any test file composes alone."""
    schema.register()
    conf = Path(__file__).resolve().parent.parent / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        return compose(config_name="config", overrides=overrides, return_hydra_config=hydra_config)
