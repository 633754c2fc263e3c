"""Exception types of isoview-dask.

Every error raised for bad input names the file concerned and what was
expected, so a user processing thousands of stacks can find the culprit.
All derive from :class:`IsoviewError`; most also derive from the built-in
exception a Python user would expect (``ValueError``, ``FileNotFoundError``,
``FileExistsError``) so generic handlers keep working.
"""

from __future__ import annotations


class IsoviewError(Exception):
    """Base class of every error isoview-dask raises on purpose."""


class InputNotFoundError(IsoviewError, FileNotFoundError):
    """A path given as input does not exist."""


class MetadataError(IsoviewError, ValueError):
    """An acquisition XML file is missing, malformed or lacks a needed field."""


class StackSizeError(IsoviewError, ValueError):
    """A ``.stack`` file's size does not match the frame size from its XML
    (typically a truncated acquisition: not a whole number of planes)."""


class KLBFormatError(IsoviewError, ValueError):
    """A KLB file has an invalid header or a block that does not decode."""


class CodecError(IsoviewError, ValueError):
    """An unknown compression codec name or an invalid codec level."""


class OutputExistsError(IsoviewError, FileExistsError):
    """An output already exists and overwriting was not requested."""


class DatasetError(IsoviewError, ValueError):
    """A folder does not look like an IsoView recording in a known layout."""


class RegistrationError(IsoviewError, ValueError):
    """A registration was rejected (its estimate hit the search limits) and the
    user asked for strict fusion (``fusion.strict_registration``)."""
