"""The genomics package's error for users' mistakes (bad input files or arguments), a ValueError.

Raised with a message naming the file and line, region or site, and what to do; command-line entry points catch it
and print the message (exit status 2) instead of a traceback. Subclasses: genomics.contigs.ContigError,
genomics.checkpoints.CheckpointMismatchError.
"""


class GenomicsInputError(ValueError):
    """A genomics input (BED, VCF, FASTA, checkpoint, argument) that cannot be used as given."""
