"""LightningModules."""

from jointdiff.models.classifier import StandaloneClassifier
from jointdiff.models.joint import JointDiffusion
from jointdiff.models.noise_aware import NoiseAwareClassifier
from jointdiff.models.pdae import PDAE
from jointdiff.models.probe import FrozenDDPMProbe

__all__ = ["PDAE", "FrozenDDPMProbe", "JointDiffusion", "NoiseAwareClassifier", "StandaloneClassifier"]
