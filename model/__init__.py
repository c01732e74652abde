"""gpf.model: backbones, GPF-CNN, attention, crop search, losses and metrics.

Public names are re-exported lazily (PEP 562), so ``import gpf.model.geometry``
does not import torch.
"""
from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {
    # backbones
    "Backbone": "backbones", "BackboneSpec": "backbones", "create_backbone": "backbones",
    "list_backbones": "backbones", "register_backbone": "backbones", "get_spec": "backbones",
    "normalize_images": "backbones", "IMAGENET_MEAN": "backbones", "IMAGENET_STD": "backbones",
    "BackboneError": "backbones", "UnknownBackboneError": "backbones", "pooled_descriptor": "backbones",
    "is_timm_name": "backbones",
    # weights
    "WeightsError": "weights", "load_backbone_weights": "weights", "imagenet_cache_path": "weights",
    # GPF-CNN
    "Classifier": "gpf", "PeripheralNet": "gpf", "GPFNet": "gpf", "GatedInformationFusion": "gpf",
    "imagenet_classifier": "gpf", "build_model": "gpf", "forward_bucketed": "gpf", "VARIANTS": "gpf",
    "describe_backbones": "gpf", "ModelError": "gpf",
    # checkpoints
    "Checkpoint": "checkpoint", "AttentionBlock": "checkpoint",
    "CheckpointError": "checkpoint", "save_checkpoint": "checkpoint", "load_checkpoint": "checkpoint",
    "state_dict_digest": "checkpoint", "stage1_checkpoint": "checkpoint", "stage2_checkpoint": "checkpoint",
    "attention_block": "checkpoint", "model_from_checkpoint": "checkpoint",
    "attention_model_from_checkpoint": "checkpoint",
    # attention, crop search, loss, metrics
    "excitation_backprop": "attention", "upsample_map": "attention", "eb_layer_names": "attention",
    "best_box": "boxsearch", "best_boxes": "boxsearch", "map_box_to_image": "boxsearch", "box_fraction": "boxsearch",
    "emd_loss": "losses", "evaluate": "metrics", "mean_score": "metrics", "std_score": "metrics",
    "EBLayerError": "attention", "AttentionMapError": "boxsearch", "DistributionError": "metrics",
    # geometry
    "peripheral_size": "geometry", "ViewGeometry": "geometry", "fit_views": "geometry",
    "fit_to_backbone": "geometry", "fitted_size": "geometry",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
