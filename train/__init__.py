"""gpf.train: the stage-1 and stage-2 trainers (paper, section IV-B), DDP, checkpoints, resume.

    from . import Stage2Config, train_stage2
    result = train_stage2(Stage2Config(shards="shards/", backbone="vgg16", out="runs/gpf"))

Public names load on first use (PEP 562), so ``import gpf.train`` does not import torch.
See docs/training.md.
"""
from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {
    "TrainConfig": "config", "Stage1Config": "config", "Stage2Config": "config", "ConfigError": "config",
    "build_config": "config", "load_yaml": "config", "VARIANTS": "config",
    "RunResult": "loop", "TrainHooks": "loop", "StepInfo": "loop", "NonFiniteLossError": "loop",
    "train_stage1": "stage1", "Stage1Error": "stage1",
    "train_stage2": "stage2", "Stage2Error": "stage2", "ShardFacts": "stage2",
    "check_checkpoint_fits_shards": "stage2",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
