"""``%%distgen``: a thin cell magic over ``nbdist.generate`` (``%distgen --prompts NAME`` as a line magic).

Options are declared once with IPython's ``magic_arguments``, so ``%%distgen?`` is the complete help
and a bad option is a one-line ``UsageError``, not a traceback.
"""

from __future__ import annotations

import sys
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

from ..arguments import magic_decorators, options_from_args
from ..options import NbdistUsageError
from ..parent.api import generate
from ..parent.report import end_lines
from ..parent.results import GenerationResult
from .gallery import Gallery
from .prompts import parse_prompts, prompts_from_namespace

__all__ = ["DistgenMagics"]


class _StoreResult:
    """An observer that puts the result in the user's ``-o`` variable as soon as it exists."""

    def __init__(self, ns: dict[str, Any], name: str) -> None:
        self._ns, self._name = ns, name

    def on_start(self, run: Any) -> None:
        pass

    def on_message(self, msg: Any) -> None:
        pass

    def on_end(self, result: GenerationResult) -> None:
        self._ns[self._name] = result


option_arguments = magic_decorators()  # the generation options, shared with the CLI (nbdist/arguments.py)


@magics_class
class DistgenMagics(Magics):
    """Holds the ``%%distgen`` magic."""

    @magic_arguments()
    @argument("-m", "--model", metavar="ID_OR_PATH", help="hub id or local folder for from_pretrained (safetensors)")
    @argument("--pipe", metavar="NAME", help="use a diffusers pipeline already in the namespace instead of --model")
    @option_arguments
    @argument("--prompts", metavar="NAME", help="take the prompts from a list in the namespace")
    @argument("-o", "--out", metavar="NAME", help="store the GenerationResult in this variable")
    @line_cell_magic
    def distgen(self, line: str, cell: str | None = None) -> GenerationResult:
        """Generate one image per prompt line (K with -k) on every GPU, streamed into a gallery.

        One prompt per line; blank lines and lines starting with # are skipped; {expr} and $name are
        expanded from the namespace. As a line magic, %distgen --prompts NAME takes a list instead.
        Image i of the run uses torch.Generator("cpu").manual_seed(seed+i),
        so the images do not depend on -n or --batch-size.
        """
        args = parse_argstring(self.distgen, line)
        ns = self.shell.user_ns
        cell = cell or ""
        try:
            model = self._model(args, ns)
            if args.prompts:
                if parse_prompts(cell, ns):
                    raise NbdistUsageError("give the prompts in the cell or with --prompts, not both")
                prompts = prompts_from_namespace(args.prompts, ns)
            else:
                prompts = parse_prompts(cell, ns)
            options = options_from_args(args)
            keep = [_StoreResult(ns, args.out)] if args.out else []  # -o is set even if the display fails
            result = generate(model, prompts, options=options, observers=[*keep, Gallery()])
        except NbdistUsageError as exc:
            raise UsageError(str(exc)) from None
        if result.device_map:
            print(f"hf_device_map: {result.device_map}")  # where --device-map balanced put each component
        if args.out:
            ns[args.out] = result
        for text in end_lines(result, args.out):  # interrupted / per-worker errors: a few lines, no tracebacks
            print(text, file=sys.stderr)
        return result

    @staticmethod
    def _model(args: Any, ns: dict[str, Any]) -> Any:
        if args.model and args.pipe:
            raise NbdistUsageError("give --model or --pipe, not both")
        if args.pipe:
            if args.pipe not in ns:
                raise NbdistUsageError(f"--pipe {args.pipe}: no variable named {args.pipe!r}")
            return ns[args.pipe]
        if not args.model:
            raise NbdistUsageError("say which model: --model ID_OR_PATH or --pipe NAME")
        return args.model
