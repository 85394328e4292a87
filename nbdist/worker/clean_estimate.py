"""The scheduler's estimate of the clean latents (x0) after each denoising step, for live previews.

``callback_on_step_end`` is given the noisy sample x_t, which early on is mostly noise (SDXL's Euler
starts at sigma ~14.6 and a linear preview of it saturates into coloured static). ComfyUI previews the
predicted clean image instead. diffusers computes it inside ``scheduler.step`` and does not hand it to
the callback, so for the length of one pipeline call ``scheduler.step`` is wrapped on the instance (the
class is untouched, and the wrapper is removed afterwards, also on an error or a Stop).

Why wrap the step rather than hook the denoiser (diffusers' ``ModelHook``): the step sees the model
output after classifier-free guidance, for the batch's images only, in the scheduler's own
parameterisation; a hook on the UNet or transformer would see the unguided batch of twice the size
and would have to redo each pipeline's guidance. The wrapper only keeps references; the estimate is
worked out when a preview asks for it (every few steps), never on the steps in between.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["CleanEstimate"]

_OUTPUT_FIELDS = ("pred_original_sample", "denoised")  # Euler, DDIM, DDPM, LMS, Heun, DPM-SDE, EDM / LCM
_X0_SOLVERS = ("dpmsolver++", "sde-dpmsolver++")  # DPM-Solver++ keeps x0 in ``model_outputs`` (convert_model_output)


class CleanEstimate:
    """Watches one scheduler's steps and gives x0 after the latest, where the scheduler makes one known."""

    def __init__(self) -> None:
        self._last: tuple[Any, Any, inspect.Signature, tuple, dict] | None = None  # scheduler, output, step's call

    @contextmanager
    def watching(self, scheduler: Any) -> Iterator[None]:
        """Wrap ``scheduler.step`` for the block: each step's output and arguments are kept (references)."""
        original: Callable[..., Any] | None = getattr(scheduler, "step", None)
        if original is None or "return_dict" not in inspect.signature(original).parameters:
            yield
            return
        parameters, own = inspect.signature(original), vars(scheduler).get("step")  # own: already wrapped by another

        # The step's own signature: pipelines pass ``generator`` and ``eta`` only to a step whose signature
        # names them (``prepare_extra_step_kwargs``); without it LCM and Euler Ancestral drew other noise.
        @functools.wraps(original)
        def step(*args: Any, return_dict: bool = True, **kwargs: Any) -> Any:
            out = original(*args, return_dict=True, **kwargs)  # by name: the tuple's fields differ per scheduler
            self._last = (scheduler, out, parameters, args, kwargs)  # bound by name only when a preview asks
            if return_dict or not dataclasses.is_dataclass(out):
                return out
            return tuple(getattr(out, field.name) for field in dataclasses.fields(out))  # what return_dict=False gives

        scheduler.step = step
        try:
            yield
        finally:
            if own is None:
                del scheduler.step  # the class's method again
            else:
                scheduler.step = own
            self._last = None

    def latest(self) -> Any | None:
        """x0 after the latest step (float32), or None where this scheduler gives no way to it."""
        if self._last is None:
            return None
        scheduler, out, parameters, args, kwargs = self._last
        for name in _OUTPUT_FIELDS:
            found = getattr(out, name, None)
            if found is not None:
                return found.float()
        arguments = _arguments(parameters, args, kwargs)
        model_output, timestep, sample = (arguments.get(k) for k in ("model_output", "timestep", "sample"))
        if model_output is None or sample is None or getattr(model_output, "shape", None) != sample.shape:
            return None
        return _from_scheduler_state(scheduler, model_output, timestep, sample)


def _arguments(parameters: inspect.Signature, args: tuple, kwargs: dict) -> dict[str, Any]:
    """``step(model_output, timestep, sample, ...)``'s arguments by name, however they were passed."""
    try:
        return parameters.bind_partial(*args, **kwargs).arguments
    except TypeError:
        return {}


def _from_scheduler_state(scheduler: Any, model_output: Any, timestep: Any, sample: Any) -> Any | None:
    """x0 for the schedulers whose step output does not carry it: DPM-Solver++, UniPC, flow matching, VP ones."""
    config = scheduler.config
    if getattr(config, "algorithm_type", None) in _X0_SOLVERS or getattr(config, "predict_x0", False) is True:
        kept = getattr(scheduler, "model_outputs", None)  # the converted output: x0 for these solvers
        return kept[-1].float() if kept and kept[-1] is not None else None
    if type(scheduler).__name__ == "FlowMatchEulerDiscreteScheduler":
        index = getattr(scheduler, "step_index", None)  # already moved on by the step: the step's sigma is one back
        if index is None or index < 1:
            return None
        sigma = scheduler.sigmas[index - 1].to(sample.device, sample.dtype).float()
        return sample.float() - sigma * model_output.float()  # x_t = (1 - sigma) x0 + sigma noise; v = noise - x0
    return _variance_preserving(scheduler, model_output, timestep, sample)


def _variance_preserving(scheduler: Any, model_output: Any, timestep: Any, sample: Any) -> Any | None:
    """x0 from x_t = sqrt(a) x0 + sqrt(1 - a) noise (PNDM, DEIS, TCD ...): where the sample is not rescaled."""
    import torch

    alphas = getattr(scheduler, "alphas_cumprod", None)
    kind = getattr(scheduler.config, "prediction_type", "epsilon")
    if alphas is None or timestep is None or float(getattr(scheduler, "init_noise_sigma", 1.0)) != 1.0:
        return None  # a sigma-scaled sample (Euler's kind) or no discrete timestep: not this formula
    try:
        step = int(timestep)
    except (TypeError, ValueError, RuntimeError):  # a batch of timesteps: not one step's
        return None
    if not 0 <= step < len(alphas):
        return None
    a = alphas[step].to(sample.device, torch.float32)
    x, out = sample.float(), model_output.float()
    if kind == "epsilon":
        return (x - (1 - a).sqrt() * out) / a.sqrt()
    if kind == "v_prediction":
        return a.sqrt() * x - (1 - a).sqrt() * out
    return out if kind == "sample" else None
