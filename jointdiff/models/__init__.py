"""LightningModules."""

from jointdiff.models.joint import JointDiffusion

__all__ = ["JointDiffusion"]
