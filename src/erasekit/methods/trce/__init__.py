"""TRCE (Chen et al., 2025): ``trce-t`` (stage 1, `textual`: the closed-form cross-attention K/V edit on
first-[EoT] embeddings), ``trce-v`` (stage 2, `visual`: triplet-margin steering of the early denoising
steps along the `trajectories` sampled with the original model) and ``trce`` (both, one delta)."""
