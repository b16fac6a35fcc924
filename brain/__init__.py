"""brain: fMRI-side library of genobrain (NIfTI input, parcellation, preprocessing, BrainLM/BrainMT/SwiFT adapters,
functional-connectivity baseline). Imports neither Lightning nor Hydra, and never imports `fusion`.
"""
