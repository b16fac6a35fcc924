"""The brain package's error for users' mistakes (bad fMRI, atlas or coordinates files, or arguments), a ValueError.

Raised with a message naming the file (and subject or parcel) and what to do; command-line entry points catch it and
print the message (exit status 2) instead of a traceback.
"""


class BrainInputError(ValueError):
    """A brain input (4D NIfTI, atlas, coordinates table, window length) that cannot be used as given."""
