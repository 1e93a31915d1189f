"""Read and write the safetensors format with nvcc_pt's own small parser, and SHA-256 digests of every tensor.

The format (https://github.com/huggingface/safetensors): an 8-byte little-endian header length, a JSON header
`{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}`, then the raw bytes.
Reading checks every field, that the byte ranges tile the data exactly, and that each range holds
`numel * itemsize` bytes; nothing in the file is executed. Files written here are ordinary safetensors files
(any safetensors reader opens them); tensors are laid out widest element first, so every one is aligned.

    >>> data, digests = encode({"w": torch.ones(2, 3)})
    >>> tensors = decode(data, "tensors.safetensors")
"""

from __future__ import annotations

import hashlib
import json
import struct
import sys
from typing import Any

import torch

from nvcc_pt.errors import PlanFormatError
from nvcc_pt.jsonfile import loads_strict

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
NAMES = {v: k for k, v in DTYPES.items()}
MAX_HEADER_BYTES = 100_000_000


def dtype_name(dtype: torch.dtype) -> str:
    """The safetensors name of a torch dtype (`F32`, ...)."""
    if dtype not in NAMES:
        raise PlanFormatError(f"tensors of dtype {dtype} cannot be saved in a plan; supported: {sorted(map(str, NAMES))}")
    return NAMES[dtype]


def sha256(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def _raw(t: torch.Tensor) -> memoryview:
    t = t.detach().to("cpu").contiguous()
    if t.numel() == 0:
        return memoryview(b"")
    return memoryview(t.reshape(-1).view(torch.uint8).numpy())


def encode(tensors: dict[str, torch.Tensor]) -> tuple[bytes, dict[str, dict[str, Any]]]:
    """The file's bytes and {name: {"dtype", "shape", "sha256"}} of every tensor."""
    if sys.byteorder != "little":
        raise PlanFormatError("plans are written little-endian; this machine is big-endian")
    order = sorted(tensors, key=lambda k: (-tensors[k].element_size(), k))
    header: dict[str, Any] = {}
    chunks, info, offset = [], {}, 0
    for name in order:
        t = tensors[name]
        raw = _raw(t)
        header[name] = {"dtype": dtype_name(t.dtype), "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        info[name] = {"dtype": header[name]["dtype"], "shape": list(t.shape), "sha256": sha256(raw)}
        chunks.append(raw)
        offset += len(raw)
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    head += b" " * (-len(head) % 8)
    return b"".join([struct.pack("<Q", len(head)), head, *chunks]), info


def _fail(where: str, why: str) -> PlanFormatError:
    return PlanFormatError(f"{where} is not a valid safetensors file: {why}; the file is corrupted, save the plan again")


def decode(data: bytes | bytearray, where: str) -> dict[str, tuple[torch.Tensor, memoryview]]:
    """{name: (tensor, its raw bytes)} of a safetensors file's bytes; tensors share memory with `data`."""
    if len(data) < 8:
        raise _fail(where, f"{len(data)} bytes is shorter than the 8-byte header length")
    (n,) = struct.unpack("<Q", data[:8])
    if n > min(MAX_HEADER_BYTES, len(data) - 8):
        raise _fail(where, f"header length {n} exceeds the file ({len(data)} bytes)")
    header = loads_strict(bytes(data[8:8 + n]), f"{where} header")
    if not isinstance(header, dict):
        raise _fail(where, "the header is not a JSON object")
    header.pop("__metadata__", None)
    base = 8 + n
    view = memoryview(data)
    spans, out = [], {}
    for name, entry in header.items():
        if not (isinstance(entry, dict) and set(entry) == {"dtype", "shape", "data_offsets"}):
            raise _fail(where, f"tensor {name!r} has entry {str(entry)[:100]}, not {{dtype, shape, data_offsets}}")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in DTYPES:
            raise _fail(where, f"tensor {name!r} has dtype {dtype!r}; expected one of {sorted(DTYPES)}")
        if not (isinstance(shape, list) and all(type(s) is int and s >= 0 for s in shape) and len(shape) <= 16):
            raise _fail(where, f"tensor {name!r} has shape {shape!r}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)
                and 0 <= offsets[0] <= offsets[1] <= len(data) - base):
            raise _fail(where, f"tensor {name!r} has byte range {offsets!r} outside the data")
        numel = 1
        for s in shape:
            numel *= s
        itemsize = torch.empty(0, dtype=DTYPES[dtype]).element_size()
        if offsets[1] - offsets[0] != numel * itemsize:
            raise _fail(where, f"tensor {name!r} of shape {shape} and dtype {dtype} spans {offsets[1] - offsets[0]} bytes")
        spans.append((offsets[0], offsets[1], name))
        raw = view[base + offsets[0]:base + offsets[1]]
        if numel == 0:
            t = torch.empty(shape, dtype=DTYPES[dtype])
        elif (base + offsets[0]) % itemsize == 0 and isinstance(data, bytearray):
            t = torch.frombuffer(data, dtype=DTYPES[dtype], count=numel, offset=base + offsets[0]).reshape(shape)
        else:
            t = torch.frombuffer(bytearray(raw), dtype=DTYPES[dtype]).reshape(shape)
        out[name] = (t, raw)
    end = 0
    for begin, stop, name in sorted(spans):
        if begin != end:
            raise _fail(where, f"tensor {name!r} starts at byte {begin}, expected {end} (overlap or gap)")
        end = stop
    if end != len(data) - base:
        raise _fail(where, f"{len(data) - base - end} bytes after the last tensor")
    return out
