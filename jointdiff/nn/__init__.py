"""Networks: the ADM UNet, its pooled-feature classifier head, and the classifier-input augmentation."""

from jointdiff.nn.heads import PooledFeatureHead, pooled_features
from jointdiff.nn.joint import JointNetwork
from jointdiff.nn.unet import UNet

__all__ = ["JointNetwork", "PooledFeatureHead", "UNet", "pooled_features"]
