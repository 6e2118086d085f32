"""Sampling from trained models, the library behind ``jointdiff sample``, ``alpha-sweep``, ``counterfactual`` and
``score``: loading (:mod:`.loading`), batched and multi-process generation (:mod:`.generate`, :mod:`.distributed`),
α sweeps (:mod:`.alpha_sweep`), counterfactual explanations (:mod:`.counterfactual`). The reverse-process loop itself
is :mod:`jointdiff.diffusion.engine`."""
