"""Run by `test_triton_on_cpu.py` in a process of its own: every kind of kernel the simulator launches, compiled ahead
of time for an NVIDIA Hopper GPU (sm_90, the H100 and H200) down to a cubin with Triton's own compiler and `ptxas`, no GPU needed. Prints
one JSON object per kernel and specialization."""

from __future__ import annotations

import json

import triton
from nvcc_pt.targets import philox_triton
from nvcc_pt.targets import simulator_triton as st
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.runtime.autotuner import Autotuner


def _kernel(fn):
    return fn.fn if isinstance(fn, Autotuner) else fn  # an autotuned kernel wraps the JIT function


def compile_for(fn, types: dict[str, str], constexprs: dict, arch: int, **options) -> int:
    """Compile `fn` for `arch`: the arguments not named in `types` are int32 scalars. Returns the cubin's size."""
    fn = _kernel(fn)
    signature = {name: "constexpr" if name in constexprs else types.get(name, "i32") for name in fn.arg_names}
    source = ASTSource(fn=fn, signature=signature, constexprs=constexprs)
    return len(triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options).asm["cubin"])


F32, F16 = "*fp32", "*fp16"
CROSSBAR = dict({n: F16 for n in ("p_ptr", "hi_ptr", "lo_ptr")}, clip_ptr="*i8", top="fp32",
                **{n: F32 for n in ("place_ptr", "y_ptr", "step_ptr", "clo_ptr", "chi_ptr", "flip_ptr", "dsum_ptr")})
KEYED = dict({n: F32 for n in ("w_ptr", "scale_ptr", "sig_ptr", "w_top_ptr", "peak_ptr", "share_ptr")}, out_ptr=F16,
             **{n: "fp32" for n in ("qmax", "top", "ratio", "nu_mean", "nu_rel", "g_min", "stuck_low", "stuck_high",
                                    "weight_std", "band_in", "band_out", "tiny")},
             **{n: "i64" for n in ("seed_var", "seed_drift", "seed_fault", "stride_n", "stride_k")}, seed_ptr="*i64")
FLAGS = ("GRID_COLS", "FLIP", "CLIPS", "POW2", "SPLIT", "ROUND_ADD", "ONE_STEP")
CASES = [
    # the default preset at bit-serial (flipped columns, one power-of-two step), with and without clip flags
    ("crossbar", st._crossbar_kernel, CROSSBAR, dict(FLIP=1, POW2=1, ROUND_ADD=1, ONE_STEP=1), {}),
    # per-column full-scale steps, divided; read noise (split levels); the clip flags the gradient reads
    ("crossbar", st._crossbar_kernel, CROSSBAR, dict(GRID_COLS=1, SPLIT=1, CLIPS=1), {}),
    ("dac_planes", st._dac_planes_kernel, {"x_ptr": F32, "p_ptr": F16, "dsum_ptr": F32}, dict(ENCODING=1, DIGITS=1), {}),
    ("keyed_columns", st._keyed_columns_kernel, KEYED, dict(DIFFERENTIAL=0, PER_WEIGHT=0, SHARED=1), {}),
    ("keyed_columns", st._keyed_columns_kernel, KEYED, dict(DIFFERENTIAL=1, PER_WEIGHT=1, SHARED=1), {}),
    # a call's regeneration: the seeds read from the device (what a CUDA graph replays for every chip)
    ("keyed_columns", st._keyed_columns_kernel, KEYED, dict(SEEDS_AT=1, SHARED=1), {}),
    ("split_linear", st._split_linear_kernel, {"x_ptr": F16, "w_ptr": F32, "scale_ptr": F32, "bias_ptr": F32,
                                               "y_ptr": F32}, dict(HAS_BIAS=1), {}),
    ("quantize_rows", st._quantize_rows_kernel, {"x_ptr": F32, "out_ptr": F16, "scale_ptr": F32, "qmax": "fp32",
                                                 "tiny": "fp32"}, dict(DEQUANTIZE=0, BLOCK=4096), {}),
    # read noise: the seed and the call's block read from the device (what a CUDA graph replays)
    ("philox_draw", philox_triton._draw_kernel, {"out_ptr": F32, "seed": "i64", "first": "i64", "start": "i64",
                                                 "n": "i64", "state_ptr": "*i64", "block_counters": "i64"},
     dict(NORMAL=1, FROM_STATE=1, BLOCK=1024), {}),
]
BLOCKS = {"crossbar": dict(BM=128, BN=64, BK=128), "keyed_columns": dict(BK=32, BC=64),
          "split_linear": dict(BM=128, BN=128, BK=64), "dac_planes": dict(BB=16, BK=128)}
DEFAULTS = {"crossbar": {f: 0 for f in FLAGS}, "keyed_columns": dict(SEEDS_AT=0, DIFFERENTIAL=0, PER_WEIGHT=0, DRIFT=0,
                                                                      FAULTS=0, SHARED=0)}

if __name__ == "__main__":
    for arch in (90,):
        for name, fn, types, flags, options in CASES:
            constexprs = {**DEFAULTS.get(name, {}), **BLOCKS.get(name, {}), **flags}
            constexprs = {k: bool(v) if k.isupper() and k not in ("ENCODING", "BLOCK") and v in (0, 1) else v
                          for k, v in constexprs.items()}
            size = compile_for(fn, types, constexprs, arch, num_warps=4, **options)
            print(json.dumps({"kernel": name, "arch": arch, "flags": {k: v for k, v in flags.items()},
                              "cubin_bytes": size}), flush=True)
