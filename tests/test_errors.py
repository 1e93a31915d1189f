import pytest
import torch
from torch import nn

import nvcc_pt
from nvcc_pt import CaptureError, FidelityError, InputError, NvccPtError


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        if x.sum() > 0:  # Python control flow on a tensor value
            return self.lin(x)
        return x


def test_uncapturable_model_names_class_and_what_to_try():
    with pytest.raises(CaptureError, match=r"DataDependent.*Try:"):
        nvcc_pt.compile(DataDependent(), example_inputs=(torch.randn(2, 4),))


def test_module_without_example_inputs():
    with pytest.raises(CaptureError, match="example_inputs"):
        nvcc_pt.compile(nn.Linear(3, 3))


def test_example_inputs_on_another_device_than_the_model():
    model = nn.Linear(4, 4, device="meta")
    with pytest.raises(InputError, match=r"Linear's weights are on meta but its example inputs .*cpu"):
        nvcc_pt.compile(model, example_inputs=(torch.randn(2, 4),))


def test_not_a_module():
    with pytest.raises(CaptureError, match="nn.Module"):
        nvcc_pt.compile(lambda x: x)


def test_wrong_dtype_rank_count_and_device(tiny_models, ids):
    cm = nvcc_pt.compile(tiny_models("tiny-llama"), fidelity="exact")
    with pytest.raises(InputError, match="input_ids must be an int64 tensor"):
        cm(ids.float())
    with pytest.raises(InputError, match="shape"):
        cm(ids[0])
    with pytest.raises(InputError, match="takes 2 input"):
        cm(ids, torch.ones_like(ids), ids)
    with torch.no_grad():
        assert torch.equal(cm(ids.int()).logits, cm(ids).logits)  # int32 token ids are accepted


def test_unknown_fidelity_and_target(tiny_models):
    with pytest.raises(FidelityError, match="bit-serial"):
        nvcc_pt.compile(tiny_models("tiny-llama"), fidelity="perfect")
    with pytest.raises(nvcc_pt.TargetError):
        nvcc_pt.compile(tiny_models("tiny-llama"), target="memristor-9000")


def test_cuda_where_there_is_none(tiny_models):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    cm = nvcc_pt.compile(tiny_models("tiny-llama"), fidelity="exact")
    with pytest.raises(nvcc_pt.DeviceError, match="CUDA"):
        cm.to("cuda")


def test_every_error_is_an_nvcc_pt_error():
    for cls in (CaptureError, FidelityError, InputError, nvcc_pt.TargetError, nvcc_pt.PlanFormatError,
                nvcc_pt.AllocationError, nvcc_pt.ExportError, nvcc_pt.DeviceError, nvcc_pt.UnsupportedOpError):
        assert issubclass(cls, NvccPtError)
