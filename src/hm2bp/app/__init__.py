"""The experiment app around the engine: Hydra configs, Lightning training, wandb/CSV logging, run directories
keyed by config fingerprint, checkpoints and resumption. The data module and the LightningModule import without
Hydra or wandb (the GPU benchmark uses them alone)."""
