"""The simulator target: programs crossbar state and runs `nvcc_pt::cim_linear`.

Numerics (DESIGN.md): weights are quantized symmetrically per output channel, split by sign
(differential: two columns; offset: `Wq + 2^(b-1)`), sliced into `cell_bits` cells and
programmed as levels with seeded device variation (`targets/devices.py`). Inputs are
quantized per token to signed integers.

Fidelity levels:
  exact       y = x W^T + b, the model's own numbers;
  quantized   quantized inputs times quantized weights;
  noisy       as quantized, with weights read back from the programmed cells (plus read noise
              per call): one dense product with the programmed effective weights;
  adc         every array column's partial sum for the whole (bipolar, one-cycle) input goes
              through an ADC, then digital shift-and-add over slices and row tiles;
  bit-serial  as adc, with inputs applied `dac_bits` per cycle (unipolar DAC, signed inputs in
              two phases or as two's complement, `input_encoding`), one ADC read per cycle.

The crossbar paths keep the programmed levels as `state.levels` `[R, rows, S*N]` (float16): row tile,
row within the tile, and one ADC column per (slice, output); on a GPU they are regenerated per call from the
chip's key instead (`REGENERATE_LEVELS`, `KeyedChip`). A differential pair is sensed
as one current (the analog subtraction), so its column holds `L+ - L-`. For each chunk of
batch rows, one GEMM per row tile gives that tile's partial sums for every column and input
cycle at once (the cycles ride along as extra rows), in units of one ADC step; the ADC rounds
and clips that block (on oneDNN inside the GEMM itself, `cpu_adc.py`), and the codes are summed over
tiles, then shifted and added over cycles and slices. Partial sums of integer levels times
integer digits are exact in float32 (< 2^24), so with ideal devices the ADC sees exact
integers. Column tiling does not change the numbers (each column has its own ADC), so it is
not materialized. On CPU the GEMMs run on oneDNN where torch ships it (on the AMD EPYC
machines this is tested on, its fp32 GEMM runs 2.5x faster than the MKL BLAS behind
`torch.mm`, which takes its AVX2 path there); on CUDA the whole crossbar
product is one fused Triton kernel (`simulator_triton.py`), and so is the per-token input
quantization.

ADC (`targets/adc.py`): `adc_bits` codes on a grid aligned on zero, `code = clamp(round(v / step), lo, hi)`,
per row tile (and, calibrated per column, per column), in one of the range modes `exact` (a power-of-two step
that holds the tile's largest partial sum, with ISAAC's flipped columns where they apply), `full-scale` (that
sum over the codes) or `calibrated` (`cm.calibrate`'s observed range, its step snapped to the level grid where
that loses nothing). The codes times their step are summed over row tiles, then shifted and added.

Inputs with NaN or infinities raise `InputError` naming the op that saw them; on a GPU the
check is queued and read once per forward (`deferred_checks`) instead of syncing per op.
"""

from __future__ import annotations

import math
import weakref
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F
from nvcc_pt.targets.adc import Grid, RangeRecorder, grid
from nvcc_pt.targets.cpu_adc import FusedAdc, magic_rounds_on_onednn
from nvcc_pt.targets.devices import (
    DRIFT_NU_REL_STD,
    TINY,
    as_stored,
    band_scale,
    digit_max,
    input_planes,
    level_sigma_steps,
    levels_dtype,
    levels_of,
    magnitudes,
    per_weight_std,
    program_levels,
    quantize_input_int,
    quantize_weight,
    read_back,
    read_sigma_levels,
    slice_levels,
    slice_places,
    weight_codes,
)
from nvcc_pt.targets.philox import (
    BLOCK_STRIDE,
    DRIFT,
    FAULT,
    VARIATION,
    ChipKey,
    block_draws,
    write_stream_seeds,
)

from nvcc_pt.errors import FidelityError, InputError
from nvcc_pt.meta import NoiseInfo
from nvcc_pt.ops import CHIP_ATTR, CLIPPED, FIDELITIES, READ_STREAM_ATTR, CimState, ReadStream, parse_config

IMPLEMENTED = FIDELITIES
CROSSBAR = ("adc", "bit-serial")
CHUNK_BYTES = {"cpu": 32 * 2**20, "cuda": 256 * 2**20}
"""Memory budget (bytes, per device type) of one batch chunk in the crossbar paths; the batch is processed in
chunks under it. On CPU it holds one row tile's partial sums: large enough that each GEMM has rows to amortize
oneDNN's weight packing over (a 4 MiB budget ran 3-4x slower on a 1024x1024 layer at batch 256), small enough
for a shared last-level cache. On CUDA it holds the fused kernel's DAC planes and per-slice sums."""

_calibration: dict[str, RangeRecorder] | None = None
_calibration_options: tuple[bool, float | None] = (False, None)
_adc_observer = None
"""While `observing_adc` is open: called as `(op, partial sums in ADC steps, lowest code, highest code)` (the codes
are numbers, or `[S*N]` tensors where the op's ADC is calibrated per column)."""


def _quantize(x: torch.Tensor, bits: int, dequantize: bool,
              dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """`quantize_input_int` (codes, or codes times scale if `dequantize`) and the per-token scale.

    On CUDA one fused kernel reads `x` once, and can write the codes as `dtype`; elsewhere, or for rows
    too long for it, the torch ops (codes in float32).
    """
    fused = kernels_for(x) if x.dtype == torch.float32 else None
    if fused is not None and x.dim() == 2 and x.shape[-1] <= fused.MAX_QUANTIZE_ROW and x.is_contiguous():
        return fused.quantize_rows(x, 2 ** (bits - 1) - 1, TINY, dequantize, dtype)
    xi, scale = quantize_input_int(x, bits)
    return (xi.mul_(scale) if dequantize else xi), scale


def quantize_input(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Symmetric per-token (last-dim row) quantization of activations, returned dequantized."""
    xi, scale = quantize_input_int(x, bits)
    return xi * scale


def op_generator(seed: int, op_index: int) -> ChipKey:
    """The key of op `op_index`'s chip for `seed` (`targets.philox`): its draws depend on (seed, op, cell) only,
    not on how many ops precede it nor on the device."""
    return ChipKey(int(seed), int(op_index))


def crossbar_levels(programmed: torch.Tensor, cfg: dict) -> torch.Tensor:
    """`[P, S, N, K]` programmed levels -> the `[R, rows, S*N]` layout the crossbar paths multiply by."""
    cols = programmed[0] - programmed[1] if cfg["sign"] == "differential" else programmed[0]
    s, n, k = cols.shape
    rows = cfg["rows"]
    tiles = math.ceil(k / rows)
    kns = F.pad(cols.permute(2, 0, 1).reshape(k, s * n), (0, 0, 0, tiles * rows - k))
    return kns.reshape(tiles, rows, s * n).contiguous()


REGENERATE_LEVELS = {"cuda": True, "cpu": False}
"""Per device type, whether crossbar ops (`adc`, `bit-serial`) keep neither their levels nor their effective weight:
each call regenerates the levels from the model's weight and the chip's key (`KeyedChip`), so the programmed state
adds almost nothing to the model (stored levels take twice the fp32 weight's bytes at 4 slices, the effective
weight once more). On a GPU with Triton that is one kernel pass per call. On the CPU it is the torch ops with the
compiled generator, 0.094 s per call of a 1024x1024 op: a fifth of that op's `bit-serial` call at 256 tokens and
fifteen times its call for one token, so the CPU stores chips unless this says otherwise. A bool sets every device
type. Censored (training) draws, and on a GPU cells wider than 11 bits, are always stored."""


@dataclass(frozen=True)
class KeyedChip:
    """How an op's programmed levels are regenerated (`REGENERATE_LEVELS`): the chip's key and device model, and the
    drift time. Kept on the op's empty `levels` buffer (`ops.CHIP_ATTR`); its `columns` are what `program_state` would
    store, bit for bit where the GPU's transcendental functions round as the draws' kernel does."""

    seed: int
    op: int
    noise: NoiseInfo
    time_s: float | None
    g_min: float
    t0: float
    seeds: torch.Tensor | None = field(default=None, compare=False, repr=False)
    """The stream seeds (`stream_seeds`) as int64 on the GPU, where the kernel reads them in a call (`columns(...,
    replayable=True)`); the op's next chip is written into the same tensor (`on_device`), so a CUDA graph recorded
    for one chip regenerates whichever is programmed when it replays."""

    def stream_seeds(self) -> tuple[int, int, int]:
        """The variation, drift and fault streams' Philox seeds (`ChipKey.stream_seed`)."""
        key = op_generator(self.seed, self.op)
        return key.stream_seed(VARIATION), key.stream_seed(DRIFT), key.stream_seed(FAULT)

    def on_device(self, device: torch.device, previous: KeyedChip | None = None) -> KeyedChip:
        """This chip with its seeds also held on `device` where that is a GPU: in `previous`'s tensor where it has
        one there (written from the host's numbers, so nothing waits for the device)."""
        if device.type != "cuda":
            return self
        held = previous.seeds if previous is not None else None
        seeds = held if held is not None and held.device == device else torch.empty(3, dtype=torch.int64,
                                                                                     device=device)
        return replace(self, seeds=write_stream_seeds(seeds, self.seed, self.op, (VARIATION, DRIFT, FAULT)))

    def recorded(self) -> tuple:
        """What a CUDA graph of a call bakes in of this chip: all but the seed where the kernel reads it on the
        device."""
        return (self.op, self.noise, self.time_s, self.g_min, self.t0, None if self.seeds is not None else self.seed)

    def columns(self, weight: torch.Tensor, scale: torch.Tensor, cfg: dict, replayable: bool = False) -> torch.Tensor:
        """The float16 levels `[R, rows, S*N]` of the chip programmed from `weight` `[N, K]` with `scale` `[N]`.
        `replayable`: the kernel reads the seeds from `seeds` (a call: its CUDA graph then serves every chip of the
        op)."""
        fused = kernels_for(weight)
        if fused is None:  # the torch ops, as `program_state` stores them
            codes = weight_codes(weight, cfg)[0]
            return _programmed_columns(levels_of(codes, cfg), codes, scale, self, cfg)[1]
        return self.kernel_columns(fused, weight, scale, cfg, replayable)

    def kernel_columns(self, fused, weight: torch.Tensor, scale: torch.Tensor, cfg: dict,
                       replayable: bool = False) -> torch.Tensor:
        """`columns` from the Triton pass of the kernel module `fused` (`simulator_triton.keyed_columns`)."""
        top = 2 ** cfg["cell_bits"] - 1
        sigmas = level_sigma_steps(self.noise.level_sigmas, top, weight.device)
        drift = None
        if self.noise.drift_nu > 0 and self.time_s is not None and self.time_s > self.t0:
            drift = (self.time_s / self.t0, self.noise.drift_nu, DRIFT_NU_REL_STD, self.g_min)
        stuck = None
        if self.noise.stuck_at_gmin or self.noise.stuck_at_gmax:
            stuck = (self.noise.stuck_at_gmin, self.noise.stuck_at_gmax)
        read = replayable and self.seeds is not None and self.seeds.device == weight.device
        seeds = self.seeds if read else self.stream_seeds()
        per_weight = self._per_weight(weight, scale, cfg) if self.noise.variation == "per-weight" else None
        return fused.keyed_columns(weight, scale, sigmas, seeds, cfg, drift, stuck, per_weight)

    def _per_weight(self, weight: torch.Tensor, scale: torch.Tensor, cfg: dict) -> tuple:
        """What the kernel needs of `devices.weight_variation` beyond the weight: max|W| of the quantized weight and each
        row's largest |code| (from one reduction: rounding is monotone, so a row's largest code is its largest
        weight's), each slice's share of a deviation, and the float32 constants as the torch ops round them."""
        qmax = 2 ** (cfg["weight_bits"] - 1) - 1
        peak = torch.round(weight.detach().float().abs().amax(1) / scale).clamp_(max=qmax)
        w_top = (peak * scale).amax()
        found = (cfg["cell_bits"], cfg["slices"], str(weight.device))
        if found not in _SHARES:
            places = slice_places(cfg["cell_bits"], cfg["slices"])
            _SHARES[found] = (places / (places**2).sum()).to(weight.device)
        inside, outside = band_scale(torch.tensor([0.5, 0.0]), self.noise.band_factor).tolist()  # float32 values
        std = torch.tensor(per_weight_std(self.noise.sigma, cfg["cell_bits"], cfg["slices"]), dtype=torch.float32)
        return w_top, peak, _SHARES[found], std.item(), inside, outside


_SHARES: dict[tuple, torch.Tensor] = {}
"""Each slice's share of a per-weight deviation, per (cell bits, slices, device): copied to a device once."""


def kernel_draws(source: torch.Tensor, cfg: dict, censor: float | None) -> bool:
    """Whether the keyed kernel (`KeyedChip.kernel_columns`) can draw the op's chip: on a GPU with Triton, float16
    levels (cells up to 11 bits), and no censored draws (training's)."""
    return censor is None and levels_dtype(cfg["cell_bits"]) == torch.float16 and kernels_for(source) is not None


def regenerates(noise: NoiseInfo, fidelity: str, source: torch.Tensor, cfg: dict, censor: float | None) -> bool:
    """Whether `program_state` keeps the op's chip as a `KeyedChip` instead of its levels (`REGENERATE_LEVELS`)."""
    on = REGENERATE_LEVELS if isinstance(REGENERATE_LEVELS, bool) else REGENERATE_LEVELS.get(source.device.type, False)
    if not on or fidelity not in CROSSBAR:
        return False
    return censor is None if source.device.type == "cpu" else kernel_draws(source, cfg, censor)


def _programmed_columns(levels: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor, chip: KeyedChip,
                        cfg: dict, censor: float | None = None,
                        layout: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The programmed cells as the columns read them (`[P, S, N, K]`, `devices.as_stored`) and, with `layout`, the
    crossbar layout of those columns (`[R, rows, S*N]`, `levels_dtype`), drawn with the torch ops."""
    programmed = program_levels(levels, chip.noise, cfg["cell_bits"], op_generator(chip.seed, chip.op), chip.time_s,
                                chip.g_min, chip.t0, censor, weights=(codes, scale))
    programmed = as_stored(programmed, cfg["sign"], cfg["cell_bits"])  # every fidelity reads the columns as stored
    return programmed, crossbar_levels(programmed, cfg).to(levels_dtype(cfg["cell_bits"])) if layout else None


def columns_weight(columns: torch.Tensor, scale: torch.Tensor, cfg: dict, k: int) -> torch.Tensor:
    """The effective weight `[N, K]` (float32) the crossbar levels `[R, rows, S*N]` hold: `read_back` of the columns."""
    slices = cfg["slices"]
    cols = columns.reshape(-1, slices, columns.shape[-1] // slices)[:k].permute(1, 2, 0).float()  # [S, N, K]
    programmed = torch.stack([cols, torch.zeros_like(cols)]) if cfg["sign"] == "differential" else cols[None]
    return read_back(programmed, cfg) * scale[:, None]


def stored_chip(state: CimState) -> tuple[torch.Tensor, torch.Tensor]:
    """An op's effective weight `[N, K]` (the source's dtype) and levels as `program_state` stores them: its buffers,
    or for a `KeyedChip` (which stores neither) its regenerated levels and their read-back, from one regeneration."""
    chip = getattr(state.levels, CHIP_ATTR, None)
    if chip is None:
        return state.weight, state.levels
    columns = chip.columns(state.source, state.scale, state.config)
    weight = columns_weight(columns, state.scale, state.config, state.source.shape[1]).to(state.source.dtype)
    return weight, columns


def store_chip(state: CimState) -> None:
    """Store a `KeyedChip`'s levels and effective weight in `state`'s buffers (where its calls do not regenerate)."""
    if getattr(state.levels, CHIP_ATTR, None) is not None:
        state.weight, state.levels = stored_chip(state)


def program_state(state: CimState, noise: NoiseInfo, fidelity: str, seed: int, op_index: int,
                  time_s: float | None = None, device_model=None, censor: float | None = None) -> None:
    """Fill `state`'s buffers for `fidelity`, drawing device variation from `seed`.

    `time_s` is the time since programming (drift, for devices that drift); `device_model` the target's
    `DeviceModel`, for `G_min` and the drift reference time; `censor` right-censors the variation (`program_levels`, for training).
    """
    if fidelity not in IMPLEMENTED:
        raise FidelityError(f"fidelity {fidelity!r} is not implemented by the simulator; choose one of {IMPLEMENTED}")
    cfg = dict(state.config, fidelity=fidelity)
    state.config = cfg
    source = state.source
    no_levels = source.new_empty(0, dtype=torch.float32)
    if fidelity == "exact" or source.device.type == "meta":
        state.weight, state.levels = source, no_levels
        return
    # Integer codes are not kept between programmings: quantizing costs a few elementwise passes, far less than
    # drawing the variation, and a kept copy would add half the weight's bytes to every op's state.
    codes, scale = weight_codes(source, cfg)
    _store(state, "scale", scale)
    state.start_read_stream(seed, op_index)
    if fidelity == "quantized":
        _store(state, "weight", (read_back(levels_of(codes, cfg).float(), cfg) * scale[:, None]).to(source.dtype))
        state.levels = no_levels
        return
    g_min, t0 = 0.0, 20.0
    if device_model is not None:
        span = device_model.g_max_us - device_model.g_min_us
        g_min, t0 = device_model.g_min_us / span * (2 ** cfg["cell_bits"] - 1), device_model.drift_t0_s
    chip = KeyedChip(int(seed), int(op_index), noise, time_s, g_min, t0)
    if regenerates(noise, fidelity, source, cfg, censor):  # nothing stored: the calls regenerate the levels
        chip = chip.on_device(source.device, getattr(state.levels, CHIP_ATTR, None))
        state.weight = source
        state.levels = no_levels
        setattr(state.levels, CHIP_ATTR, chip)
        return
    if fidelity == "noisy" and kernel_draws(source, cfg, censor):  # one kernel pass draws the columns
        columns = chip.kernel_columns(kernels_for(source), source, scale, cfg)
        _store(state, "weight", columns_weight(columns, scale, cfg, source.shape[1]).to(source.dtype))
        state.levels = no_levels
        return
    programmed, columns = _programmed_columns(levels_of(codes, cfg), codes, scale, chip, cfg, censor,
                                              fidelity in CROSSBAR)
    _store(state, "weight", (read_back(programmed, cfg) * scale[:, None]).to(source.dtype))
    if fidelity in CROSSBAR:
        _store(state, "levels", columns)
    else:
        state.levels = no_levels


def start_read_streams(states: list[tuple[str, CimState]], seed: int) -> None:
    """Restart every op's read noise for `seed` (what programming does), for states restored from a file."""
    for i, (_, state) in enumerate(states):
        if state.scale.numel():
            state.start_read_stream(seed, i)


def read_normals(scale: torch.Tensor, cfg: dict, shape: torch.Size, device: torch.device) -> torch.Tensor:
    """One call's standard normals `shape` for an op's read noise: the next call's block of the keyed generator's
    `READ` stream for (seed, op) (`ReadStream`, kept on the op's `scale` buffer), the same on every device. On a
    GPU the stream's (seed, call) pair is read where it lives, so a CUDA graph can record the draw."""
    stream = getattr(scale, READ_STREAM_ATTR, None)
    if stream is None:  # a state never programmed here: key it by the op's name, deterministically
        stream = ReadStream(0, zlib.crc32(cfg["op"].encode()), device)
        setattr(scale, READ_STREAM_ATTR, stream)
    return block_draws(stream.next_call(device), math.prod(shape), BLOCK_STRIDE).view(shape)


def _store(state: CimState, name: str, value: torch.Tensor) -> None:
    """Set a state buffer, in place where the new value fits the old buffer (never the source weight itself).

    Re-programming then leaves the buffers where they were, so CUDA graphs recorded against them stay valid.
    """
    old = getattr(state, name)
    if (old.numel() and old.shape == value.shape and old.dtype == value.dtype and old.device == value.device
            and old.data_ptr() != state.source.data_ptr()):
        old.copy_(value)
    else:
        setattr(state, name, value)


def recording() -> bool:
    """Whether a `recording_ranges` or `observing_adc` block is open (calls must then run eagerly)."""
    return _calibration is not None or _adc_observer is not None


@contextmanager
def observing_adc(observer):
    """Within the block, crossbar paths hand each row tile's partial sums, in ADC steps before the ADC rounds and
    clips them, to `observer(op, values, lo, hi)` (`lo`, `hi`: the ADC's end codes). For analysis (`cm.analyze`)."""
    global _adc_observer
    previous, _adc_observer = _adc_observer, observer
    try:
        yield
    finally:
        _adc_observer = previous


@contextmanager
def recording_ranges(per_column: bool = False, percentile: float | None = None):
    """Within the block, crossbar paths record the partial sums each op's ADC sees: yields {op: `RangeRecorder`}
    (`.range()` is what `cm.calibrate` stores: per op, or per row tile and column; a percentile range clips)."""
    global _calibration, _calibration_options
    previous, _calibration = _calibration, {}
    previous_options, _calibration_options = _calibration_options, (per_column, percentile)
    try:
        yield _calibration
    finally:
        _calibration, _calibration_options = previous, previous_options


PROGRESS_DELAY_S = 3.0
"""A call's crossbar progress bar appears once the call has run this long (unless asked for at once)."""
_progress = None
"""While `crossbar_progress` is open: the bar each crossbar op advances by one."""


@contextmanager
def crossbar_progress(ops: int, fidelity: str, show: bool | None = None):
    """Within the block (one call of a compiled model), each op at `adc` or `bit-serial` fidelity advances a tqdm bar
    of `ops` steps: shown once the call has run `PROGRESS_DELAY_S` seconds (`show=None`, plans of several ops), at
    once (True), or never (False). A bit-serial SmolLM2-135M forward on two CPU cores runs for minutes.

    Example:
        >>> with crossbar_progress(len(cm.plan.states()), cm.fidelity, show=True):
        ...     cm.graph_module(*cm.prepare_inputs(ids))
    """
    global _progress
    if show is False or fidelity not in CROSSBAR or ops < (1 if show else 2) or _progress is not None:
        yield
        return
    from tqdm.auto import tqdm

    _progress = tqdm(total=ops, desc=f"{fidelity} ops", unit="op", delay=0.0 if show else PROGRESS_DELAY_S,
                     leave=False)
    try:
        yield
    finally:
        _progress.close()
        _progress = None


_deferred: list[tuple[str, torch.Tensor]] | None = None


def nonfinite_error(op: str) -> InputError:
    return InputError(f"op {op!r} received NaN or infinite inputs; check the model's inputs and the activations "
                      "feeding this op (run at fidelity 'exact' to see where they arise)")


def _check_finite(values: torch.Tensor, cfg: dict) -> None:
    """Raise if `values` (an op's input, or its per-token scales, which a bad entry makes non-finite) are not finite.

    Off the CPU, inside `queued_checks`, the values are queued instead (no device sync); `check_values` reads them.
    """
    if _deferred is not None and values.device.type != "cpu":
        # small tensors (per-token scales) are queued whole; large ones reduced first (NaN and inf survive amax)
        values = values.detach()
        _deferred.append((cfg["op"], values.reshape(-1) if values.numel() <= 2**16 else values.amax().reshape(1)))
    elif not bool(torch.isfinite(values).all()):
        raise nonfinite_error(cfg["op"])


@contextmanager
def queued_checks():
    """Within the block, ops off the CPU queue their NaN/inf input checks: yields the queue, `[(op, value)]`."""
    global _deferred
    previous, _deferred = _deferred, []
    try:
        yield _deferred
    finally:
        _deferred = previous


def queued_values(queued: list[tuple[str, torch.Tensor]]) -> torch.Tensor | None:
    """All ops' queued values end to end, on the device (a few numbers per token: cheap to copy to the host)."""
    if not queued:
        return None
    return queued[0][1] if len(queued) == 1 else torch.cat([v for _, v in queued])


def check_values(queued: list[tuple[str, torch.Tensor]], values: np.ndarray) -> None:
    """Raise `InputError` naming the first op whose queued `values` (on the host) are not all finite."""
    finite = np.isfinite(values)
    if not finite.all():
        bad, end = int(np.argmin(finite)), 0
        for op, queued_op in queued:
            end += queued_op.numel()
            if bad < end:
                raise nonfinite_error(op)


def raise_if_nonfinite(queued: list[tuple[str, torch.Tensor]]) -> None:
    """Read the queued checks with one device sync; the error names the first op that saw a bad input."""
    values = queued_values(queued)
    if values is not None:
        check_values(queued, values.cpu().numpy())


@contextmanager
def deferred_checks():
    """Within the block, ops on a GPU queue their NaN/inf input checks; leaving it checks them all with one sync.

    A device sync per op would stall the GPU's queue; the error still names the first op that saw a bad input.
    """
    with queued_checks() as queued:
        yield
    raise_if_nonfinite(queued)


def _onednn_linear(x: torch.Tensor, w_t: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, w_t, None, "none", [], "")


def _has_onednn() -> bool:
    """Whether oneDNN's fp32 GEMM is usable here (it runs AVX-512 kernels where the BLAS behind `torch.mm` may not)."""
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")):
        return False
    try:
        a, b = torch.arange(6.0).view(2, 3), torch.arange(12.0).view(3, 4)
        return torch.equal(_onednn_linear(a, b.t()), a @ b)
    except RuntimeError:
        return False


_ONEDNN = _has_onednn()


def _on_onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return _ONEDNN and x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`F.linear`, through oneDNN on CPU where it is usable."""
    if not _on_onednn(x, weight):
        return F.linear(x, weight, bias)
    y = _onednn_linear(x.reshape(-1, x.shape[-1]), weight)
    y = y.add_(bias) if bias is not None else y
    return y.view(*x.shape[:-1], weight.shape[0])


_FUSED = None


def kernels_for(t: torch.Tensor):
    """The Triton kernels (`simulator_triton`) that serve tensors on `t`'s device: on a CUDA GPU where Triton is
    installed; else None, and the torch ops serve."""
    return _fused_kernels() if t.device.type == "cuda" else None


def _fused_kernels():
    """The Triton kernels of `simulator_triton`, or None where Triton is not installed."""
    global _FUSED
    if _FUSED is None:
        try:
            from nvcc_pt.targets import simulator_triton as _FUSED
        except ImportError:
            _FUSED = False
    return _FUSED or None


def _tile_product(x: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """`x @ levels` for one row tile: `[M, rows] @ [rows, S*N]`, a fresh tensor the ADC may overwrite."""
    if _on_onednn(x, levels):
        return _onednn_linear(x, levels.t())
    return x @ levels


_MAGIC_ROUNDS = _ONEDNN and magic_rounds_on_onednn()
"""Whether the CPU crossbar path lets oneDNN's GEMM round and clip (`targets/cpu_adc.py`)."""


def _tile_codes(planes: torch.Tensor, levels: torch.Tensor, g: Grid, op: str,
                clips: list[torch.Tensor] | None = None, fused: FusedAdc | None = None) -> torch.Tensor:
    """ADC outputs of every row tile summed over tiles, in level units: `[T*b, S*N]` for DAC planes `[T, b, K]`.

    One GEMM per row tile; its block of partial sums (sized by `CHUNK_BYTES`) is rounded, clipped and
    accumulated in place while it is still in cache. `levels` are as the columns hold them (flipped where
    `g.flip` says; those codes are read back as `top * sum(digits) - code`). With `clips`, appends `[R, b, N]`:
    whether any of row tile r's reads for (row, output) fell outside the ADC's codes (for the gradient, `ops.CLIPPED`).
    """
    tiles, rows, _ = levels.shape
    cycles, b, k = planes.shape
    xt = F.pad(planes, (0, tiles * rows - k)).view(cycles * b, tiles, rows)
    common = not g.per_column and bool((g.step == g.step[0, 0]).all())  # sum codes, scale once at the end
    recorder = None
    if _calibration is not None:
        recorder = _calibration.setdefault(op, RangeRecorder(*_calibration_options))
    acc = None
    if fused is not None:  # the tiles the GEMM itself rounds and clips
        acc = fused.codes(xt)
        if not common:
            acc = acc.mul_(fused.step)
    outside = []
    for r in range(tiles):
        if fused is not None and r in fused.tiles:
            continue
        # in units of one code: v / step, correctly rounded (ties round alike everywhere); a power-of-two step
        # scales the inputs instead, exactly and for free
        if g.per_column:
            _, step, lo, hi = (t[r].to(levels.device) for t in (g.inv_step, g.step, g.lo, g.hi))
            codes = _tile_product(xt[:, r], levels[r]).div_(step)
        else:
            inv, step, lo, hi = g.scalars(r)
            exact_inv = math.frexp(inv)[0] == 0.5
            codes = _tile_product(xt[:, r] * inv, levels[r]) if exact_inv else _tile_product(xt[:, r], levels[r]).div_(step)
        sign = correction = None
        if g.flip is not None and bool(g.flip[r].any()):  # flipped columns read top * sum(digits) - sum
            flipped = g.flip[r].to(codes.dtype)
            sign = 1 - 2 * flipped
            correction = (xt[:, r].sum(1, keepdim=True) * g.top / step) * flipped
        if recorder is not None:  # what the column sums to, unflipped, in level units
            true = codes if sign is None else codes * sign + correction
            recorder.update(r, true * step)
        if clips is not None:  # any cycle's read of (row, column) rounding past the end codes
            low, high = torch.aminmax(codes)  # one contiguous pass: a full-scale ADC never clips
            if g.per_column or low < lo - 0.5 or high >= hi + 0.5:
                outside.append(((codes < lo - 0.5) | (codes >= hi + 0.5)).view(cycles, b, -1).any(0))
            else:
                outside.append(torch.zeros(b, codes.shape[-1], dtype=torch.bool, device=codes.device))
        if _adc_observer is not None:
            _adc_observer(op, codes, lo, hi)
        if recorder is None:  # while calibrating, an ideal ADC: the ops downstream see what well-ranged ADCs give
            codes = codes.round_().clamp_(lo, hi)
        if sign is not None:
            codes = codes.mul_(sign).add_(correction)
        if not common:
            codes = codes.mul_(step)
        acc = codes if acc is None else acc.add_(codes)
    if clips is not None:
        clips.append(torch.stack(outside))  # [R, b, S*N]
    return acc.mul_(float(g.step[0, 0])) if common else acc


def _place_sum(parts: torch.Tensor, places: torch.Tensor) -> torch.Tensor:
    """`sum_t places[t] * parts[t]` in a fixed order: a row's result does not depend on the batch around it (the
    ADC outputs are not integers once a step is not a power of two, so a GEMM's blocking would show)."""
    total = parts[0] * float(places[0])
    for part, place in zip(parts[1:], places[1:].tolist()):
        total.add_(part, alpha=place)
    return total


def _clip_limits(g: Grid, levels: torch.Tensor, bipolar: bool) -> tuple[torch.Tensor, ...]:
    """What `_may_clip` compares against, per row tile: the largest and the most negative level as the columns hold
    them (for a bipolar DAC, whose digits can be negative, both the largest |level|), the smallest partial sum (in
    level units) that reads above the top code and the largest that reads below the lowest, over the tile's
    columns; and the rows of a tile."""
    top = levels.amax((1, 2)).clamp(min=0)
    bottom = (-levels.amin((1, 2))).clamp(min=0)
    if bipolar:
        top = bottom = torch.maximum(top, bottom)
    above = ((g.hi + 0.5) * g.step).amin(-1).to(levels.device)
    below = ((g.lo - 0.5) * g.step).amax(-1).to(levels.device)
    return top, bottom, above, below, levels.shape[1]


def _may_clip(planes: torch.Tensor, top: torch.Tensor, bottom: torch.Tensor, above: torch.Tensor,
              below: torch.Tensor, rows: int) -> bool:
    """Whether any read of DAC planes `[T, b, K]` can fall outside the ADC's codes, by a bound, not by reading.

    A row tile's partial sum lies within (the sum of |digits| on its rows) x (its largest level, or its most negative
    one) (`_clip_limits`); where that stays inside every column's codes, with a margin for the division's rounding,
    no read clipped and the fused kernel need not record flags.
    """
    cycles, b, k = planes.shape
    tiles = top.shape[0]
    digits = F.pad(planes.abs(), (0, tiles * rows - k)).view(cycles, b, tiles, rows).sum(-1, dtype=torch.float32)
    digits = digits.amax((0, 1))
    digits = digits * (1 + 1e-5)
    return bool(((digits * top >= above) | (-digits * bottom <= below)).any())


def _read_levels(stored: torch.Tensor, cfg: dict, read: float, scale: torch.Tensor | None) -> torch.Tensor:
    """The float32 levels one call's reads multiply by: read noise added (fresh per call, from the op's read stream
    on `scale`; none where `read` is 0)."""
    levels = stored.float()
    if read > 0:  # fresh read noise per call; a differential pair reads two independent cells
        factor = math.sqrt(2) if cfg["sign"] == "differential" else 1.0
        levels = levels + read_normals(scale, cfg, levels.shape, levels.device).mul_(read * factor)
    return levels


def _held(g: Grid, levels: torch.Tensor) -> torch.Tensor:
    """`levels` as the columns hold them: flipped columns (ISAAC's encoding) as `top - level`."""
    return levels if g.flip is None else torch.where(g.flip[:, None, :], g.top - levels, levels)


def _call_levels(stored: torch.Tensor, adc_range: torch.Tensor, cfg: dict, bit_serial: bool, k: int, read: float,
                 scale: torch.Tensor | None) -> tuple[Grid, torch.Tensor]:
    """One call's ADC grid and the float32 levels its reads multiply by, as the columns hold them (`_read_levels`,
    `_held`)."""
    g = grid(cfg, adc_range, bit_serial, k, stored)  # flips read from the programmed levels
    return g, _held(g, _read_levels(stored, cfg, read, scale))


KEPT_BYTES = {"cpu": 2 * 2**30}
"""Bytes (per device type) the CPU crossbar paths may keep between calls: an op's ADC grid and its tiles prepared for
the GEMM that rounds and clips (`FusedAdc`, float32, twice the float16 levels), so that a call of a few tokens (a
decoding step) does not redo five passes over the levels. Kept while the levels and ADC ranges are unchanged
(reprogramming and calibration write new values, which their version counters show); ops beyond the budget are
prepared per call. 0 keeps nothing."""

_KEPT_ATTR = "_nvcc_kept_call"
_kept_total = [0]


def _release(size: int) -> None:
    _kept_total[0] -= size


def _kept_call(stored: torch.Tensor, adc_range: torch.Tensor, cfg: dict, bit_serial: bool, k: int):
    """`(grid, levels, prepared)` of a CPU call without read noise, kept on the levels tensor between calls while
    `KEPT_BYTES` allows; None where nothing is kept (the caller prepares the call itself)."""
    budget = KEPT_BYTES.get("cpu", 0)
    if budget <= 0:
        return None
    key = (stored._version, adc_range.data_ptr(), adc_range._version, tuple(adc_range.shape), bit_serial, k,
           repr(sorted(cfg.items())), _MAGIC_ROUNDS)
    found = getattr(stored, _KEPT_ATTR, None)
    if found is not None and found[0] == key:
        return found[1]
    size = 2 * stored.numel() * 4  # at most: the prepared tiles and the float32 levels
    if found is None and _kept_total[0] + size > budget:
        return None
    g, levels = _call_levels(stored, adc_range, cfg, bit_serial, k, 0.0, None)
    prepared = None
    if _MAGIC_ROUNDS and _on_onednn(levels, levels):
        prepared = FusedAdc.prepare(levels, g, *digit_max(cfg, bit_serial)[::-1])
    if prepared is not None and len(prepared.tiles) == levels.shape[0]:
        levels = stored  # every tile reads its prepared copy: the float32 levels are not read again
    if found is None:
        _kept_total[0] += size
        weakref.finalize(stored, _release, size)
    value = (g, levels, prepared)
    setattr(stored, _KEPT_ATTR, (key, value))
    return value


def _crossbar(x: torch.Tensor, levels: torch.Tensor, scale: torch.Tensor, adc_range: torch.Tensor,
              cfg: dict, bit_serial: bool, record_clips: bool = False, keep: bool = True) -> torch.Tensor:
    """Integer-domain crossbar product of `x` [B, K] -> [B, N] through DAC, arrays, ADCs and shift-and-add.

    `record_clips` stores the op's clip mask `[R, B, N]` in `ops.CLIPPED` (the gradient's; see `nvcc_pt.ops`).
    `keep`: the CPU may keep the call's prepared tiles on `levels` between calls (`KEPT_BYTES`; not for levels
    regenerated per call).
    """
    stored = levels  # as stored (`devices.levels_dtype`), multiplied in float32
    sn = levels.shape[-1]
    slices = cfg["slices"]
    xi, sx = _quantize(x, cfg["input_bits"], dequantize=False)
    _check_finite(sx, cfg)
    read = cfg.get("read_sigma", 0.0) * (2 ** cfg["cell_bits"] - 1)
    kept = None
    if keep and x.device.type == "cpu" and read <= 0 and not record_clips and not recording():
        kept = _kept_call(stored, adc_range, cfg, bit_serial, x.shape[-1])
    fused = kernels_for(x) if not recording() else None
    fused = fused if fused is not None and fused.fits(cfg, bit_serial) else None  # float16 digits, exactly
    if kept is not None:
        g, levels, prepared = kept
    elif fused is not None:  # the kernel reads the stored levels
        g, levels = grid(cfg, adc_range, bit_serial, x.shape[-1], stored), stored
    else:
        g, levels = _call_levels(stored, adc_range, cfg, bit_serial, x.shape[-1], read, scale)
    place_s = slice_places(cfg["cell_bits"], slices)  # on the host: `_place_sum` reads them, and a read from the
    # device would be a sync (which a CUDA graph cannot record)
    place_t = input_planes(xi[:1], cfg, bit_serial)[1]
    cycles = len(place_t)
    budget = CHUNK_BYTES.get(x.device.type, CHUNK_BYTES["cuda"])
    clips: list[torch.Tensor] | None = [] if record_clips else None
    if fused is not None:  # the fused kernel keeps only each chunk's planes (float16), per-slice sums and clip flags
        # float16 levels multiply exactly as they are, flipped columns included (the kernel reads those as
        # top * sum(digits) - partial); noisy reads and float32 levels need the split
        read_levels = None if stored.dtype == torch.float16 and read <= 0 else _read_levels(stored, cfg, read, scale)
        hi_lo = (stored.contiguous(), None) if read_levels is None else fused.split_levels(read_levels)
        adc_at = fused.grid_arrays(g, stored.shape[0], sn, x.device)
        chunk = max(1, budget // (4 * sn + 2 * cycles * x.shape[1] + stored.shape[0] * sn // slices * record_clips))
        limits = None
        if record_clips:
            held = _held(g, stored.float() if read_levels is None else read_levels)
            limits = _clip_limits(g, held, digit_max(cfg, bit_serial)[1])
    else:
        chunk = max(1, budget // (4 * cycles * sn))
    if kept is None:  # the tiles whose GEMM also rounds and clips, on oneDNN
        prepared = None
        if _MAGIC_ROUNDS and fused is None and not record_clips and not recording() and _on_onednn(levels, levels):
            prepared = FusedAdc.prepare(levels, g, *digit_max(cfg, bit_serial)[::-1])
    out = []
    for start in range(0, xi.shape[0], chunk):
        if fused is not None:  # the DAC planes in one pass, as float16, with the digit sums flipped columns read
            planes, digits = fused.dac_planes(xi[start:start + chunk], cfg, bit_serial, cfg["rows"],
                                              digits=adc_at[4] is not None)
            flags = None
            if clips is not None and _may_clip(planes, *limits):
                flags = torch.zeros(stored.shape[0], planes.shape[1], sn // slices, device=x.device, dtype=torch.int8)
                clips.append(flags.view(torch.bool))  # already reduced over slices
            acc = fused.crossbar_codes(planes, *hi_lo, place_t, *adc_at, clips=flags, digits=digits)
        else:
            planes = input_planes(xi[start:start + chunk], cfg, bit_serial)[0]
            acc = _tile_codes(planes, levels, g, cfg["op"], clips, prepared)
            if cycles > 1:  # shift-and-add over input cycles
                acc = _place_sum(acc.view(cycles, -1, sn), place_t.cpu())
        out.append(_place_sum(acc.view(-1, slices, sn // slices).transpose(0, 1), place_s))  # and over slices
    y = torch.cat(out) if len(out) > 1 else out[0]
    if clips:  # a (tile, output) pair is clipped if any slice's read was; no mask if nothing clipped
        mask = torch.cat(clips, dim=1) if len(clips) > 1 else clips[0]
        if fused is None:
            mask = mask.view(*mask.shape[:2], slices, -1).any(2)
        if bool(mask.any()):
            CLIPPED[cfg["op"]] = mask
    if cfg["sign"] == "offset":  # the reference column, in digital
        y = y - 2 ** (cfg["weight_bits"] - 1) * xi.sum(-1, keepdim=True)
    return y * sx * scale


def _read_noise_weight(weight: torch.Tensor, scale: torch.Tensor, cfg: dict) -> torch.Tensor:
    """The effective weight with one call's read noise: the per-cell noise summed through shift-and-add."""
    read = cfg.get("read_sigma", 0.0) * (2 ** cfg["cell_bits"] - 1)
    if read <= 0:
        return weight
    places = slice_places(cfg["cell_bits"], cfg["slices"])
    cells = (2 if cfg["sign"] == "differential" else 1) * float((places**2).sum())
    noise = read_normals(scale, cfg, weight.shape, weight.device) * (read * math.sqrt(cells))
    return weight + (noise * scale[:, None]).to(weight.dtype)


def _instances(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, state: list[torch.Tensor],
               config: str) -> torch.Tensor:
    """`cim_linear` over I stacked instances (`weight` `[I, N, K]`), x's leading dimension holding I blocks."""
    cfg = parse_config(config)
    inst = weight.shape[0]
    if x.dim() < 2 or x.shape[0] % inst:
        raise InputError(f"op {cfg['op']!r} holds {inst} stacked instances, so its input's leading dimension must "
                         f"be a multiple of {inst}; got shape {tuple(x.shape)}")
    xs = x.reshape(inst, -1, x.shape[-1])
    scale, levels, adc_range = state
    if cfg["fidelity"] in CROSSBAR:
        outs, clips = [], []
        for i in range(inst):
            outs.append(cim_linear(xs[i], weight[i], bias, [scale, levels[i], adc_range], config))
            clips.append(CLIPPED.pop(cfg["op"], None))
        y = torch.stack(outs)
        some = next((c for c in clips if c is not None), None)
        if some is not None:  # instance-major rows, as the input's; an instance without a mask clipped nothing
            CLIPPED[cfg["op"]] = torch.cat([torch.zeros_like(some) if c is None else c for c in clips], dim=1)
    else:
        if cfg["fidelity"] != "exact":
            xi, sx = quantize_input_int(xs, cfg["input_bits"])
            _check_finite(sx, cfg)
            xs = xi.mul_(sx)
            weight = _read_noise_weight(weight, scale, cfg) if cfg["fidelity"] == "noisy" else weight
        else:
            _check_finite(xs, cfg)
        y = torch.bmm(xs, weight.transpose(1, 2))
        y = y + bias if bias is not None else y
    return y.reshape(*x.shape[:-1], -1)


def cim_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, state: list[torch.Tensor],
               config: str) -> torch.Tensor:
    if weight.dim() == 3:
        return _instances(x, weight, bias, state, config)
    cfg = parse_config(config)
    fidelity = cfg["fidelity"]
    if fidelity == "exact":
        _check_finite(x, cfg)
        return F.linear(x, weight, bias)
    scale, levels, adc_range = state
    if fidelity in ("quantized", "noisy"):
        w = _read_noise_weight(weight, scale, cfg) if fidelity == "noisy" else weight
        fused = kernels_for(x) if x.dtype == w.dtype == torch.float32 else None
        if fused is not None and 2 ** (cfg["input_bits"] - 1) <= fused.MAX_SPLIT_CODE:
            xi, sx = _quantize(x.reshape(-1, x.shape[-1]), cfg["input_bits"], dequantize=False, dtype=torch.float16)
            _check_finite(sx, cfg)
            return fused.split_linear(xi, sx, w, bias).view(*x.shape[:-1], w.shape[0])
        xq, sx = _quantize(x.reshape(-1, x.shape[-1]), cfg["input_bits"], dequantize=True)
        _check_finite(sx, cfg)
        return _linear(xq.view(x.shape), w, bias)
    if fidelity in CROSSBAR:
        chip = getattr(levels, CHIP_ATTR, None)
        if chip is not None:  # regenerated from the source weight, which the op is then given
            levels = chip.columns(weight.detach(), scale, cfg, replayable=True)
        elif levels.numel() == 0:
            raise FidelityError(f"op {cfg['op']!r} runs at fidelity {fidelity!r} but holds no programmed levels; "
                                "call cm.program() or cm.with_fidelity(...) to program it")
        flat = x.reshape(-1, x.shape[-1]).float()
        grads = x.requires_grad or weight.requires_grad  # (autograd is off inside the op; the flags are kept)
        CLIPPED.pop(cfg["op"], None)  # a mask is this call's: one a call without autograd left must not carry over
        y = _crossbar(flat, levels, scale, adc_range, cfg, fidelity == "bit-serial", grads, keep=chip is None)
        if _progress is not None:
            _progress.update(1)
        y = y.to(x.dtype).reshape(*x.shape[:-1], -1)
        return y + bias if bias is not None else y
    raise FidelityError(f"op {cfg['op']!r}: fidelity {fidelity!r} is not implemented; choose one of {IMPLEMENTED}")


torch.library.impl("nvcc_pt::cim_linear", "CompositeExplicitAutograd")(cim_linear)

__all__ = ["cim_linear", "magnitudes", "program_levels", "program_state", "quantize_input", "quantize_weight",
           "read_back", "read_sigma_levels", "recording_ranges", "slice_levels"]

# Registers the implementation of `nvcc_pt::cim_matmul` (mapped dynamic products) beside `cim_linear`'s.
from nvcc_pt.targets import simulator_dynamic as _simulator_dynamic  # noqa: E402, F401
