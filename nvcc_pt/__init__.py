"""nvcc_pt: compile prompt-tuned LLMs onto non-volatile compute-in-memory crossbars.

    >>> import nvcc_pt
    >>> cm = nvcc_pt.compile(model, target="reram-128x128")
    >>> logits = cm(input_ids); print(cm.report)
"""

from nvcc_pt import targets as _targets  # noqa: F401  (registers presets)
from nvcc_pt.api import CompiledModel, compile, load
from nvcc_pt.errors import (
    AllocationError,
    CaptureError,
    DeviceError,
    ExportError,
    FidelityError,
    FileWriteError,
    InputError,
    ModelLoadError,
    NvccPtError,
    PassError,
    PlanFormatError,
    SchedulerError,
    SweepError,
    TargetError,
    UnsupportedOpError,
)
from nvcc_pt.montecarlo import MonteCarloResult, montecarlo
from nvcc_pt.ops import FIDELITIES
from nvcc_pt.passmanager import MappingPolicy
from nvcc_pt.report import MappingReport
from nvcc_pt.sweeps import SweepResult, read_sweep, sweep
from nvcc_pt.targets import DeviceModel, TargetSpec, get_target, list_targets, register_target
from nvcc_pt.training import TrainResult, train

__version__ = "0.1.0"


def read_onnx_annotations(path):
    """The CiM annotations of a file written by `cm.export_onnx` (see `nvcc_pt.targets.onnx`)."""
    from nvcc_pt.targets.onnx import read_onnx_annotations as read  # onnx libraries load on first use

    return read(path)


__all__ = [
    "FIDELITIES", "AllocationError", "CaptureError", "CompiledModel", "DeviceError", "DeviceModel", "ExportError",
    "FidelityError", "FileWriteError", "InputError", "MappingPolicy", "ModelLoadError", "MappingReport", "NvccPtError", "PassError", "PlanFormatError",
    "TargetError", "TargetSpec", "UnsupportedOpError", "compile", "get_target", "list_targets", "load", "read_onnx_annotations",
    "register_target", "MonteCarloResult", "montecarlo", "TrainResult", "train",
    "SchedulerError", "SweepError", "SweepResult", "read_sweep", "sweep",
]
