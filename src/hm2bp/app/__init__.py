"""The experiment app around the engine: Hydra configs, Lightning training, wandb/CSV logging, run directories
keyed by config fingerprint, checkpoints and resumption. Importing it registers the config resolvers it needs."""

from hm2bp.app.identity import register_resolvers

register_resolvers()
