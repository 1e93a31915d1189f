"""Hardware targets: specs, device models, the registry, and where a plan lands (simulator, ONNX)."""

from nvcc_pt.targets.registry import get_target, list_targets, register_target
from nvcc_pt.targets.spec import DeviceModel, TargetSpec

__all__ = ["DeviceModel", "TargetSpec", "get_target", "list_targets", "register_target"]
