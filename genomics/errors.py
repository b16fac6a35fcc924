"""The genomics package's error for users' mistakes (bad input files or arguments), a ValueError.

Raised with a message naming the file and line, region or site, and what to do; command-line entry points catch it
and print the message (exit status 2) instead of a traceback. Subclasses: GenomicsFileNotFound, SampleNotFound,
ReferenceMismatch below, genomics.contigs.ContigError, genomics.checkpoints.CheckpointMismatchError.
"""


class GenomicsInputError(ValueError):
    """A genomics input (BED, VCF, FASTA, checkpoint, argument) that cannot be used as given."""


class GenomicsFileNotFound(GenomicsInputError, FileNotFoundError):
    """A named input file (FASTA, VCF, BED, checkpoint) does not exist."""


class SampleNotFound(GenomicsInputError, KeyError):
    """A subject or sample id that the VCF does not hold (also a KeyError, for lookups)."""

    __str__ = ValueError.__str__  # the message as written, not KeyError's repr of it


class ReferenceMismatch(GenomicsInputError):
    """A VCF REF allele that disagrees with the FASTA at its site: usually two genome builds."""
