"""Shared encoders used by the methods (see :func:`build_encoder`)."""

from methods.nets.encoders import Encoder, SmallCNN, backbone_parameter_ids, build_encoder, mlp, torchvision_trunk

__all__ = ["Encoder", "SmallCNN", "backbone_parameter_ids", "build_encoder", "mlp", "torchvision_trunk"]
