"""Public API: `compile()`, `load()` and the `CompiledModel` they return."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import fx, nn
from tqdm.auto import tqdm

from nvcc_pt import meta
from nvcc_pt import validate as check
from nvcc_pt.calls import build_output, prepare_inputs
from nvcc_pt.capture import capture, prompted_parts
from nvcc_pt.cuda_graphs import GraphCache
from nvcc_pt.errors import DeviceError, FidelityError, InputError
from nvcc_pt.ops import CHIP_ATTR, FIDELITIES, READ_STREAM_ATTR
from nvcc_pt.passes.decompose_attention import decompose_attention
from nvcc_pt.passes.lower import lower, write_states
from nvcc_pt.passmanager import MappingPolicy, PassContext, run_passes
from nvcc_pt.pipeline import run_pipeline
from nvcc_pt.plan import ExecutablePlan, attach_records, collect_records, save_plan
from nvcc_pt.report import MappingReport, build_report
from nvcc_pt.targets import TargetSpec, get_target
from nvcc_pt.targets.simulator import (
    crossbar_progress,
    deferred_checks,
    program_state,
    recording,
    start_read_streams,
)


def _check_fidelity(fidelity: str) -> str:
    if fidelity not in FIDELITIES:
        raise FidelityError(f"unknown fidelity {fidelity!r}; choose one of {FIDELITIES}")
    return fidelity


class CompiledModel:
    """A model mapped onto a CiM target: call it to run the plan on the simulator.

    Example:
        >>> cm = nvcc_pt.compile(model, target="reram-128x128", fidelity="noisy", seed=0)
        >>> logits = cm(input_ids)
        >>> print(cm.report)
        >>> cm.program(seed=3)            # another programmed instance of the same chip
        >>> cm.save("plan/"); nvcc_pt.load("plan/")
    """

    def __init__(self, plan: ExecutablePlan, report: MappingReport, soft_prompt: torch.Tensor | None = None):
        self.plan = plan
        self.report = report
        self.soft_prompt = soft_prompt
        """The soft prompt used when a call passes none (prompted models with the prompt as an input)."""
        self.cuda_graphs = True
        """On a CUDA device, replay repeated inference calls (no autograd) from CUDA graphs, one per input shape.
        A replay draws the next call's read noise, and the write noise of mapped dynamic products: the draw kernels
        read each op's stream seeds and call counts where they live, on the GPU (`philox.block_draws`)."""
        self._graphs = GraphCache()
        self._checked = None
        self._addresses: tuple | None = None
        self.loaded_from: str | None = None
        """The plan directory this model was loaded from (None when compiled here)."""
        self._weight_leaves: list | None = None
        self.progress: bool | None = None
        """A progress bar over the mapped ops of a call at `adc` or `bit-serial` fidelity: None shows it once a call
        has run for `simulator.PROGRESS_DELAY_S` seconds, True at once, False never."""

    # -- properties -------------------------------------------------------------------------
    @property
    def target(self) -> TargetSpec:
        return self.plan.target

    @property
    def fidelity(self) -> str:
        return self.plan.fidelity

    @property
    def seed(self) -> int:
        return self.plan.seed

    @property
    def graph_module(self) -> fx.GraphModule:
        return self.plan.graph_module

    @property
    def device(self) -> torch.device:
        for _, state in self.plan.states():
            return state.weight.device
        for p in self.graph_module.parameters():
            return p.device
        return torch.device("cpu")

    # -- running ----------------------------------------------------------------------------
    def __call__(self, *args: torch.Tensor, **kwargs: torch.Tensor):
        """Run the plan. Token models take `input_ids`, `attention_mask` and `soft_prompt` by position or
        name and return what the model returns (`.logits` for a causal LM); other modules take their
        inputs by position.
        """
        return build_output(self.plan.capture, self.run_graph(self.prepare_inputs(*args, **kwargs)))

    forward = __call__

    def prepare_inputs(self, *args: torch.Tensor, **kwargs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The graph's inputs for `cm(*args, **kwargs)`, checked, defaults filled in (`nvcc_pt.calls`)."""
        flat = prepare_inputs(self.plan.capture, args, kwargs, self.soft_prompt)
        signature = tuple((a.shape, a.dtype, a.device) for a in flat)
        if signature != self._checked:  # repeated calls with the same kind of inputs skip the device check
            device = self.device
            if any(a.device != device for a in flat):
                raise InputError(f"inputs are on {sorted({str(a.device) for a in flat})} but the compiled model is "
                                 f"on {device}; move them with .to({str(device)!r})")
            self._checked = signature
        return flat

    def run_graph(self, flat: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """The lowered graph on prepared inputs: its flat outputs."""
        if self._weight_leaves is not None and torch.is_grad_enabled():
            from nvcc_pt.training import bound_weights

            with bound_weights(self._weight_leaves), deferred_checks():
                return self.graph_module(*flat)
        if self.cuda_graphs and flat[0].is_cuda and not torch.is_grad_enabled() and not recording():
            if self._addresses is None:  # a replay reads the buffers at these addresses; the ADC grid is baked in
                self._addresses = tuple((s.weight.data_ptr(), s.scale.data_ptr(), s.levels.data_ptr(),
                                         tuple(s.adc_range.tolist()) if s.adc_range.numel() <= 2
                                         else s.adc_range.data_ptr(), _recorded_chip(s))
                                        for _, s in self.plan.states())
            signature = tuple((a.shape, a.dtype, a.device) for a in flat)
            return self._graphs.run(self.graph_module, flat, (signature, self._addresses), kept=lambda: noise_kept(self))
        with deferred_checks(), crossbar_progress(len(self.plan.states()), self.fidelity, self.progress):
            return self.graph_module(*flat)

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        """Generate tokens with the plan, following `transformers`' `generate` (see `nvcc_pt.generation`).

        Example:
            >>> out = cm.generate(ids, attention_mask=mask, max_new_tokens=20)            # greedy
            >>> out = cm.generate(ids, max_new_tokens=20, do_sample=True, top_p=0.9)     # sampling
        """
        from nvcc_pt.generation import generate

        return generate(self, input_ids, attention_mask, **kwargs)

    def train_weights(self, enabled: bool = True) -> CompiledModel:
        """Let gradients reach the mapped weights (opt-in); returns self.

        Each mapped op's source weight, the model's own parameter, then gets `W_eff`'s straight-through gradient
        on every call with autograd on (`nvcc_pt.training.weight_leaves`). A plan loaded from files has no model
        behind it: `InputError`. See docs/training.md.

        Example:
            >>> cm.train_weights(); loss_fn(cm(x), y).backward(); model[0].weight.grad
        """
        from nvcc_pt.training import weight_leaves

        self._weight_leaves = weight_leaves(self) if enabled else None
        return self

    def _state_replaced(self) -> None:
        """Call after any change to the state buffers: CUDA graphs are keyed by where the state lives."""
        self._addresses = None
        self._checked = None

    def program(self, seed: int | None = None, *, time_s: float | None = None,
                draw_on: str | None = None) -> CompiledModel:
        """Re-sample device variation (a new programmed instance of the chip); returns self.

        Every draw comes from `seed`, whatever torch's global generator holds; read noise, drawn per call,
        restarts too, so the calls after `program(seed)` give the same numbers every time.

        `time_s`: seconds since programming, for devices that drift (PCM); None keeps the last value
        (initially the device's reference time, no drift).
        `draw_on` ("cpu" or "device") is accepted for older callers and changes nothing: every chip is drawn
        where the model is, from a generator keyed by (seed, op, cell) (`targets.philox`), so a seed is the
        same chip on every device.
        """
        if seed is not None:
            check.seed("seed", seed, where="program")
        if time_s is not None:
            check.real("time_s", time_s, lo=0.0, lo_open=True, where="program")
        if draw_on is not None:
            check.choice("draw_on", draw_on, ("cpu", "device"), where="program")
        draw_on = self.plan.results.get("draw_on", "cpu") if draw_on is None else draw_on
        self.plan.results["draw_on"] = draw_on
        seed = self.plan.seed if seed is None else int(seed)
        if time_s is not None:
            self.plan.results["time_s"] = float(time_s)
        time_s = self.plan.results.get("time_s")
        states = self.plan.states()
        records = self.plan.records

        def program_one(i: int) -> None:
            name, state = states[i]
            program_state(state, records[name][meta.NOISE], self.plan.fidelity, seed, i, time_s, self.target.device)

        # Each op's draws are keyed by (seed, op, cell), so ops can be programmed on parallel threads (torch's ops
        # release the GIL) and a seed still gives the same cells. On a GPU, where the work queues on one stream
        # anyway, two threads keep it busy without holding many ops' temporaries at once.
        workers = 2 if self.device.type == "cuda" else torch.get_num_threads()
        with ThreadPoolExecutor(max(1, min(len(states), workers))) as pool:
            list(tqdm(pool.map(program_one, range(len(states))), total=len(states), desc="programming crossbars",
                      disable=len(states) < 64))
        for _, writes in write_states(self.graph_module):
            writes.reseed(seed)  # operands written per input draw their noise from (seed, op) a block per call
        self.plan.seed = seed
        self.report._data["seed"] = seed
        self._state_replaced()
        return self

    def with_fidelity(self, fidelity: str) -> CompiledModel:
        """The same mapping at another fidelity level, programmed with the same seed (a new object)."""
        check.fidelity(fidelity, where="with_fidelity")
        plan = _relower(self.plan.exported, self.plan.records, self.plan.target, fidelity, self.plan.seed,
                        self.plan.capture, self.plan.results)
        report = MappingReport(self.report.to_dict())
        report._data["fidelity"] = fidelity
        cm = CompiledModel(plan, report, self.soft_prompt)
        cm.program(self.plan.seed)
        for (_, new), (_, old) in zip(cm.plan.states(), self.plan.states()):
            new.adc_range = old.adc_range.clone()  # a calibration carries over
        return cm.to(self.device)

    def calibrate(self, batches, per_column: bool = False, percentile: float | None = None) -> CompiledModel:
        """Set each op's ADC range from the partial sums real inputs produce; returns self.

        `batches`: an iterable of inputs (a tensor or a tuple of tensors per call). Runs at the current
        fidelity, which must be "adc" or "bit-serial", and records the partial sums every op's ADC sees. While
        it records, every ADC is ideal (no rounding, no clipping), so an op's sums come from the activations
        that the ops before it give with well-set ranges, not with the ranges being replaced: the result does
        not depend on the ranges the plan had before.
        `per_column`: one range per (row tile, array column) instead of one per op. `percentile` (50 to 100,
        exclusive): the range spans the (100 - p)-th to the p-th percentile of the sums, clipping the rest,
        instead of their min and max. The step is snapped to the level grid where that loses nothing
        (`nvcc_pt.targets.adc`). The ops then read their range instead of the spec's `adc_range` mode.

        Example:
            >>> cm = nvcc_pt.compile(model, target="reram-128x128", fidelity="bit-serial").calibrate([ids1, ids2])
            >>> cm.calibrate([ids1], per_column=True, percentile=99.99)
        """
        from nvcc_pt.targets.simulator import CROSSBAR, recording_ranges

        if isinstance(batches, (torch.Tensor, str, bytes)) or not hasattr(batches, "__iter__"):
            raise InputError(f"calibrate: batches must be an iterable of model inputs, such as [ids1, ids2], "
                             f"got {type(batches).__name__}")
        per_column = check.boolean("per_column", per_column, where="calibrate")
        if percentile is not None:
            percentile = check.real("percentile", percentile, lo=50.0, hi=100.0, lo_open=True, where="calibrate")
            if percentile == 100.0:
                raise InputError("calibrate: percentile=100 clips nothing; pass percentile=None for the observed "
                                 "min and max, or a value in (50, 100) to clip the tails")
        if self.fidelity not in CROSSBAR:
            raise FidelityError(f"calibrate sets ADC ranges, which fidelity {self.fidelity!r} does not model; "
                                f"use cm.with_fidelity('adc') or 'bit-serial' first")
        with recording_ranges(per_column, percentile) as ranges, torch.no_grad():
            for batch in batches:
                self(*(batch if isinstance(batch, (tuple, list)) else (batch,)))
        if not ranges:
            raise InputError("calibrate got no batches; pass an iterable of model inputs")
        for _, state in self.plan.states():
            if state.config["op"] in ranges:
                found = ranges[state.config["op"]].range()
                state.adc_range = found if found.numel() == 2 else found.to(state.levels.device)
        self._state_replaced()
        return self

    def analyze(self, batches, *, progress: bool | None = None, top: int = 3):
        """Per mapped op on real inputs: its error and SNR at this fidelity against `exact`, the ADC's clipping
        and codes used, its share of the end-to-end error, and the ops that hurt most with what to change
        (`nvcc_pt.analyze`). `batches`: an iterable of inputs, as for `calibrate`. Returns a `LayerAnalysis`.

        Example:
            >>> a = cm.analyze([ids1, ids2]); print(a.table()); a.to_json("layers.json"); a.plot()
        """
        from nvcc_pt.analyze import analyze

        return analyze(self, batches, progress=progress, top=top)

    def to(self, device: str | torch.device) -> CompiledModel:
        """Move the plan's weights and state to `device` (for example "cuda"); returns self."""
        check.instance("device", device, (str, torch.device), where="to")
        try:
            device = torch.device(device)
        except RuntimeError as e:
            raise DeviceError(f"to: device {device!r} is not a device torch knows ({e}); use 'cpu' or 'cuda'") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise DeviceError("CUDA was asked for but torch.cuda.is_available() is False on this machine; "
                              "use cm.to('cpu') or run where a CUDA GPU and a CUDA build of torch are present")
        self._graphs.clear()
        self._state_replaced()
        self.graph_module.to(device)
        _retarget_devices(self.graph_module, device)
        for _, state in self.plan.states():
            state.source = state.source.to(device)
        if self.soft_prompt is not None:
            self.soft_prompt = self.soft_prompt.to(device)
        return self

    # -- files ------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the plan directory (plan.json, program.json, tensors.safetensors); see docs/plan-format.md.

        The path keeps the previous plan until the new one is complete; a path that is a symbolic link is
        refused (`FileWriteError`), and a missing parent folder is created.

        Example:
            >>> cm.save("plan"); nvcc_pt.load("plan")
        """
        check.path("path", path, where="save")
        extra = {"__soft_prompt__": self.soft_prompt.detach().cpu().contiguous()} if self.soft_prompt is not None else {}
        path = save_plan(self.plan, path, report=self.report.to_dict(), extra_tensors=extra)
        return path

    def export_onnx(self, path: str | Path) -> Path:
        """Write the plan as ONNX with CiM annotations (`nvcc_pt.CimLinear` calls); onnxruntime runs it.

        Example:
            >>> cm.export_onnx("model.onnx"); nvcc_pt.read_onnx_annotations("model.onnx")["ops"]
        """
        from nvcc_pt.targets.onnx import export_onnx

        check.path("path", path, where="export_onnx")
        return export_onnx(self, path)

    def __repr__(self) -> str:
        t = self.report.totals
        return (f"CompiledModel({self.plan.capture.model_class} on {self.target.name}, fidelity={self.fidelity!r}, "
                f"seed={self.seed}, mapped ops={t['mapped_ops']}, arrays={t['arrays']}, chips={t['chips']})")


def _retarget_devices(gm: fx.GraphModule, device: torch.device) -> None:
    """Point ops that create or copy tensors at `device`: capture recorded the device it ran on, and
    tensor constants the graph reads are plain attributes that `Module.to` does not move."""
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    swap = lambda a: device if isinstance(a, torch.device) and a != device else a
    changed = False
    for node in gm.graph.nodes:
        args, kwargs = tuple(swap(a) for a in node.args), {k: swap(v) for k, v in node.kwargs.items()}
        if args != node.args or kwargs != node.kwargs:
            node.args, node.kwargs = args, kwargs
            changed = True
        if node.op == "get_attr":
            owner, _, name = node.target.rpartition(".")
            module = gm.get_submodule(owner) if owner else gm
            value = getattr(module, name)
            if isinstance(value, torch.Tensor) and not isinstance(value, nn.Parameter) and value.device != device \
                    and name not in module._buffers:
                setattr(module, name, value.to(device))
    if changed:
        gm.recompile()


def _relower(exported, records, target, fidelity, seed, capture_info, results) -> ExecutablePlan:
    gm = exported.module(check_guards=False)
    ctx = PassContext(target=target, results={"fidelity": fidelity, "seed": seed},
                      policy=MappingPolicy(map_dynamic=bool(results.get("map_dynamic"))))
    gm = run_passes(gm, ctx, [decompose_attention])  # the records name the nodes it made
    attach_records(gm, records)
    ctx.provided.update(meta.RECORD_TYPES)
    gm = run_passes(gm, ctx, [lower])
    return ExecutablePlan(gm, exported, target, fidelity, seed, capture_info, records, dict(results))


def _recorded_chip(state) -> tuple | None:
    """What a CUDA graph bakes in of an op's regenerated chip (`KeyedChip.recorded`): not the seed, which the kernel
    reads on the GPU, so a graph recorded for one chip serves the next (Monte Carlo replays its chips)."""
    chip = getattr(state.levels, CHIP_ATTR, None)
    return chip.recorded() if chip is not None else None


@contextmanager
def noise_kept(cm: CompiledModel):
    """Put every op's read-noise and write-noise counters back afterwards: the calls after an analysis, or after a
    CUDA graph's warm-up call, draw the noise they would have drawn without it (`program(seed)`'s promise)."""
    scales = [s.scale for _, s in cm.plan.states()]
    saved = [None if (r := getattr(t, READ_STREAM_ATTR, None)) is None else r.state.clone() for t in scales]
    keys = [(w, w.key.clone()) for _, w in write_states(cm.graph_module)]
    try:
        yield
    finally:
        for scale, pair in zip(scales, saved):
            stream = getattr(scale, READ_STREAM_ATTR, None)
            if stream is not None and pair is not None:
                stream.state.copy_(pair)
            elif stream is not None:  # started by the calls, for a state never programmed: from 0 again
                stream.calls = 0
        for w, key in keys:
            w.key.copy_(key)


def compile(  # noqa: A001 - the name users expect
    model: nn.Module,
    target: str | TargetSpec = "reram-128x128",
    *,
    example_inputs: tuple | torch.Tensor | None = None,
    fidelity: str = "noisy",
    seed: int = 0,
    policy: MappingPolicy | dict | str | None = None,
    precision: dict[str, dict[str, int]] | None = None,
    soft_prompt: torch.Tensor | None = None,
    constant_prompt: bool = False,
    duplicate: bool | dict[str, int] = False,
    tokens: int = 1,
    dynamic_shapes=None,
    captured: tuple | None = None,
) -> CompiledModel:
    """Map `model` onto `target` and return a runnable `CompiledModel`.

    Args:
        model: any nn.Module; Hugging Face causal LMs, `SoftPromptLM` and PEFT prompt-tuning models get
            default example inputs and dynamic batch and sequence.
        target: a registered name (`nvcc_pt.list_targets()`), `<device>-<rows>x<cols>`, or a `TargetSpec`.
        example_inputs: inputs to capture with (required for models that are not causal LMs).
        fidelity: "exact", "quantized", "noisy", "adc" or "bit-serial" (see DESIGN.md, Numerics).
        seed: seeds the device variation drawn when programming.
        policy: which products go on crossbars (`MappingPolicy`, a dict of its fields, or "no-lm-head").
        precision: per-layer bit overrides, module-name glob -> {"weight_bits": 4, ...}.
        soft_prompt: `[n_virtual, hidden]` virtual tokens to prepend (a causal LM becomes a prompted one).
        constant_prompt: bake the soft prompt into the graph instead of keeping it a graph input.
        duplicate: weight duplication to balance the pipeline: True fits copies of the bottleneck ops within the
            chips' capacity; {op or module glob: copies} asks for exact counts (DuplicationError if they do not fit).
        tokens: input vectors per inference that the report's latency is given for (prefill length).
        dynamic_shapes: for models other than causal LMs, which input dimensions vary, in torch.export's own terms
            (`{"x": {0: torch.export.Dim("batch")}}` by argument name, or a tuple by position). Token models get a
            dynamic batch and sequence, other modules a dynamic first dimension where the model allows it.
        captured: `(cm.plan.exported, cm.plan.capture)` of an earlier compile of the same model with the same
            inputs and prompt options, to skip capturing it again (a sweep compiles one model for many targets).

    Example:
        >>> cm = nvcc_pt.compile(model, target="reram-128x128")
        >>> print(cm.report)
    """
    check.compile_options(seed_value=seed, fidelity_value=fidelity, precision=precision, soft_prompt=soft_prompt,
                          constant_prompt=constant_prompt, duplicate=duplicate, tokens=tokens)
    spec = get_target(target)
    policy = MappingPolicy.coerce(policy)
    ctx = PassContext(target=spec, policy=policy, precision=dict(precision or {}),
                      results={"fidelity": fidelity, "seed": seed, "map_dynamic": policy.map_dynamic},
                      duplicate=duplicate, tokens=tokens)
    exported, info = captured or capture(model, example_inputs, soft_prompt=soft_prompt,
                                         constant_prompt=constant_prompt, dynamic_shapes=dynamic_shapes)
    gm = exported.module(check_guards=False)
    ctx.results["dead_products"] = drop_dead_code(gm)
    gm = run_pipeline(gm, ctx)
    records = collect_records(gm)
    results = {k: v for k, v in ctx.results.items() if k != "dataflow"}
    plan = ExecutablePlan(gm, exported, spec, fidelity, seed, info, records, results)
    plan.dataflow = ctx.results.get("dataflow")
    report = build_report(gm, ctx, model=info.model_class, fidelity=fidelity, seed=seed)
    prompt = None
    if info.kind == "soft-prompt-lm" and not info.constant_prompt:
        prompt = _default_prompt(model, soft_prompt)
    cm = CompiledModel(plan, report, prompt)
    return cm.program(seed)


def _default_prompt(model: nn.Module, soft_prompt: torch.Tensor | None) -> torch.Tensor:
    if soft_prompt is not None:
        return soft_prompt.detach().clone()
    parts = prompted_parts(model)
    assert parts is not None, "a prompted capture comes from a PromptedModel, a PEFT model or soft_prompt="
    return parts[1].detach().clone()


def drop_dead_code(gm: fx.GraphModule) -> list[dict[str, str]]:
    """Remove ops whose results nothing uses (a pooler next to a pooled hidden state, say).

    Returns the matrix products among them, by node and owning module, for the report: they are
    neither mapped nor run, so they cost nothing.
    """
    from nvcc_pt.passes.find_matmuls import MATMUL_OPS, owning_module

    before = {n.name: n for n in gm.graph.nodes if n.op == "call_function" and n.target in MATMUL_OPS}
    modules = {name: owning_module(n)[0] for name, n in before.items()}
    if not gm.graph.eliminate_dead_code():
        return []
    gm.recompile()
    alive = {n.name for n in gm.graph.nodes}
    return [{"name": name, "module": modules[name]} for name in before if name not in alive]


def load(path: str | Path) -> CompiledModel:
    """A `CompiledModel` from a plan directory written by `cm.save(path)`.

    The directory is untrusted input: nothing in it is executed, and anything malformed, corrupted or
    inconsistent raises `PlanFormatError` (docs/plan-format.md).

    Example:
        >>> cm.save("plan"); cm2 = nvcc_pt.load("plan")
    """
    from nvcc_pt.errors import PlanFormatError
    from nvcc_pt.plan import read_plan

    try:
        p = read_plan(path)
        plan = _relower(p.program, p.records, p.target, p.fidelity, p.seed, p.capture, p.results)
        _retarget_devices(plan.graph_module, torch.device("cpu"))  # a plan compiled on a GPU loads on the CPU
        _restore_states(plan, p.states, path)
        start_read_streams(plan.states(), p.seed)
        # Recounted from the checked records rather than read back: the saved report is derived data.
        report = build_report(plan.graph_module, PassContext(target=p.target, results=dict(p.results)),
                              model=p.capture.model_class, fidelity=p.fidelity, seed=p.seed)
    except PlanFormatError:
        raise
    except Exception as e:  # the last guard: a plan file never surfaces a raw exception (nor another NvccPtError)
        raise PlanFormatError(f"plan directory {path} could not be loaded ({type(e).__name__}: {str(e)[:300]}); "
                              "it is malformed, save the plan again") from e
    cm = CompiledModel(plan, report, p.soft_prompt)
    cm.loaded_from = str(path)
    return cm


def _restore_states(plan: ExecutablePlan, tensors: dict[str, torch.Tensor], path) -> None:
    from nvcc_pt.errors import PlanFormatError

    for name, state in plan.states():
        for buf in ("weight", *state.STATE):
            key = f"{name}.{buf}"
            if key not in tensors:
                raise PlanFormatError(f"{Path(path) / 'tensors.safetensors'} lacks {key!r}; the programmed weights "
                                      "are missing, save the plan again")
            value = tensors[key]
            if buf == "weight" and tuple(value.shape) != tuple(state.source.shape):
                raise PlanFormatError(f"{key} has shape {tuple(value.shape)}, expected {tuple(state.source.shape)}")
            setattr(state, buf, value.to(state.source.device))
        state.config = dict(state.config, fidelity=plan.fidelity)
