"""Users' mistakes, per package, each a ValueError whose message names the file, line or subject and what to do:
fusion.errors.FusionInputError (fusion.cohort.CohortError, UnsafeConfigError), genomics.errors.GenomicsInputError,
brain.errors.BrainInputError. USER_ERRORS is what the entry points (fusion.train, fusion.export, fusion.validate)
catch to print the message and exit with status 2, never a traceback. Library code: no Lightning, no Hydra.
"""

from __future__ import annotations

from brain.errors import BrainInputError
from genomics.errors import GenomicsInputError


class FusionInputError(ValueError):
    """A fusion input (cohort, run folder, config) that cannot be used as given."""


class InputFileNotFound(FusionInputError, FileNotFoundError):
    """A file the user named (checkpoint, run folder's config) does not exist."""


class UnsafeConfigError(FusionInputError):
    """A saved config names a `_target_` outside the project's packages (instantiating it would run foreign code)."""


class TrainingDivergedError(RuntimeError):
    """The training loss became NaN/Inf; the message names the step and the last good checkpoint."""


USER_ERRORS = (FusionInputError, GenomicsInputError, BrainInputError)
