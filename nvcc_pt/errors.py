"""One exception hierarchy for everything nvcc_pt raises at its boundary.

Every message names the thing that was wrong, the value it had, and what to do instead.
"""

from __future__ import annotations


class NvccPtError(Exception):
    """Base class of every error nvcc_pt raises on purpose."""


class TargetError(NvccPtError, ValueError):
    """An unknown target name or an invalid `TargetSpec` field."""


class CaptureError(NvccPtError):
    """The model could not be captured as a graph."""


class UnsupportedOpError(NvccPtError):
    """A graph holds an op that a stage cannot handle."""


class PassError(NvccPtError):
    """A graph pass failed; names the pass, the passes that ran before it and the node."""

    def __init__(self, pass_name: str, passes_before: tuple[str, ...], node: str | None, cause: str):
        self.pass_name = pass_name
        self.passes_before = passes_before
        self.node = node
        where = f" at node {node!r}" if node else ""
        before = ", ".join(passes_before) or "none"
        super().__init__(f"pass {pass_name!r} failed{where} (passes before it: {before}): {cause}")


class AllocationError(NvccPtError):
    """The mapped weights do not fit the target's fixed hardware."""


class InputError(NvccPtError, ValueError):
    """Inputs given to a compiled model (or to an API call) have the wrong type, shape or values."""


class FidelityError(NvccPtError, ValueError):
    """An unknown fidelity level, or one a stage does not support."""


class PlanFormatError(NvccPtError):
    """A saved plan directory is missing, corrupted or of another schema version."""


class ExportError(NvccPtError):
    """A compiled plan could not be exported."""


class DeviceError(NvccPtError):
    """A compute device (such as CUDA) was asked for but is not available."""


class DataError(NvccPtError, ValueError):
    """A data file (such as a LaMP question or output file) is missing, does not parse, or holds a bad record."""


class CostModelError(NvccPtError, ValueError):
    """A hardware cost figure is negative, malformed, or missing for a component the target uses."""


class DuplicationError(AllocationError):
    """Weight duplication was asked for beyond the chips' capacity, or with an invalid count."""


class FileWriteError(NvccPtError, OSError):
    """A file or directory could not be written (full disk, no permission, a symbolic link in the way).

    Nothing is half-written: the path keeps its previous contents.
    """


class ModelLoadError(NvccPtError, ValueError):
    """A model could not be loaded: a missing package, an incomplete checkpoint, an unknown architecture."""


class SweepError(NvccPtError, ValueError):
    """A design-space sweep was configured wrongly: an unknown grid field, a value out of its bounds, a malformed
    sweep file, or an output path that holds another sweep's results. Raised before any point is computed."""


class SchedulerError(NvccPtError, ConnectionError):
    """The Dask scheduler of a sweep could not be reached, or the cluster lost its workers."""
