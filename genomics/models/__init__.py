"""Genomics encoders behind the genobrain encoder interface (fusion/encoders.py): token ids (B, R, H, L) or dosages
(B, S) -> (B, d).

    KmerSpectrum             canonical k-mer spectrum of each region's haplotypes (baseline, no parameters)
    DosageEncoder            ALT allele dosages at the VCF sites of the regions (linear baseline, no parameters)
    CaduceusGenomicsEncoder  Caduceus (genomics/caduceus) sequence embeddings pooled over strands, haplotypes, regions
Each exposes `output_dim`; the DNA language models themselves live in their own packages (genomics/caduceus).
"""

from genomics.models.caduceus import CaduceusGenomicsEncoder
from genomics.models.dosage import DosageEncoder
from genomics.models.kmer import KmerSpectrum

__all__ = ["CaduceusGenomicsEncoder", "DosageEncoder", "KmerSpectrum"]
