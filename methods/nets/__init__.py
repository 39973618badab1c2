"""Shared encoders used by the methods (see :func:`build_encoder`)."""

from methods.nets.encoders import Encoder, SmallCNN, build_encoder, mlp, torchvision_trunk

__all__ = ["Encoder", "SmallCNN", "build_encoder", "mlp", "torchvision_trunk"]
