"""genomics: DNA-side library of genobrain (sequences from FASTA + VCF, k-mer baseline, Caduceus, SSM kernels).

Imports neither Lightning nor Hydra, and never imports `fusion`.
"""
