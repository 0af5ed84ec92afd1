"""Synthetic data sources: a ray-cast 3D head (:mod:`pipeline.synth.head`) for the head-pose writers."""
