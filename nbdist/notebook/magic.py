"""``%%distgen``: a thin cell magic over ``nbdist.generate`` (``%distgen -p TEXT`` or ``--prompts NAME`` on one line).

Options are declared once with IPython's ``magic_arguments``, so ``%%distgen?`` is the complete help
and a bad option is a one-line ``UsageError``, not a traceback. Every "no prompts" message names a
form that works as typed: IPython's own answer to an empty ``%%distgen`` cell ("did you mean the line
magic?") led to a line magic that then asked for prompts in the cell.
"""

from __future__ import annotations

import re
import sys
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments
from IPython.utils.process import arg_split

from ..arguments import as_typed, magic_decorators, options_from_args
from ..options import NbdistUsageError
from ..parent.api import generate, shutdown, status
from ..parent.output.report import end_lines, setup_refusal
from ..parent.output.terminal import TerminalProgress
from ..parent.planning.init_images import lookup_init
from ..parent.pool.warm_pool import the_pool
from ..parent.results.actions import show_runs_with
from ..parent.results.result import GenerationResult
from .gallery import Gallery
from .prompts import parse_prompts, prompts_from_namespace

__all__ = ["DistgenMagics"]


class _StoreResult:
    """An observer that puts the result in the user's ``-o`` variable as soon as it exists."""

    def __init__(self, ns: dict[str, Any], name: str) -> None:
        self._ns, self._name = ns, name
        self.result: GenerationResult | None = None  # the run's full result, once the pool has ended it

    def on_start(self, run: Any) -> None:
        pass

    def on_message(self, msg: Any) -> None:
        pass

    def on_end(self, result: GenerationResult) -> None:
        self.result = result
        self._ns[self._name] = result


option_arguments = magic_decorators()  # the generation options, shared with the CLI (nbdist/arguments.py)


@magics_class
class DistgenMagics(Magics):
    """Holds the ``%%distgen`` magic."""

    def __init__(self, shell: Any = None, **kwargs: Any) -> None:
        super().__init__(shell=shell, **kwargs)
        cleanup = getattr(shell, "input_transformers_cleanup", None)
        if cleanup is not None and give_empty_cell_a_body not in cleanup:  # once, even after %reload_ext
            cleanup.append(give_empty_cell_a_body)
        show_runs_with(lambda background: [Gallery(background=background)] if _has_widget_front_end(shell) else None)

    @magic_arguments()
    @argument(
        "-m",
        "--model",
        metavar="ID_OR_PATH",
        help="hub id or local folder for from_pretrained (safetensors); demo: the demo model shipped with nbdist "
        "(a folder named demo: ./demo)",
    )
    @argument("--pipe", metavar="NAME", help="use a diffusers pipeline already in the namespace instead of --model")
    @option_arguments
    @argument(
        "--prompts",
        metavar="NAME",
        help="take the prompts from a list (or str) in the namespace, or from a file (one prompt per line)",
    )
    @argument(
        "-p",
        "--prompt",
        action="append",
        metavar="TEXT",
        help='a prompt (repeatable; after --prompts), e.g. -p "a dog"',
    )
    @argument("-o", "--out", metavar="NAME", help="store the GenerationResult (or with --background the run handle)")
    @argument(
        "--background",
        action="store_true",
        help="return at once: the gallery fills while other cells run; -o NAME holds a handle "
        "(NAME.wait(), NAME.cancel(), NAME.done)",
    )
    @argument("--status", action="store_true", help="show the warm workers (model, devices, pids, idle time)")
    @argument("--shutdown", action="store_true", help="stop the warm workers and free their (GPU) memory")
    @argument(
        "--idle-timeout",
        type=float,
        metavar="S",
        help="stop the warm workers after S seconds idle (0: never; default 600 or $NBDIST_IDLE_TIMEOUT)",
    )
    @line_cell_magic
    def distgen(self, line: str, cell: str | None = None) -> Any:
        """Generate one image per prompt line (K with -k) on every GPU, streamed into a gallery.

        One prompt per line; blank lines and lines starting with # are skipped; {expr} and $name are
        expanded from the namespace. As a line magic, %distgen -p TEXT (repeatable) or --prompts NAME
        (a list variable or a prompts file) gives them instead.
        Image i of the run uses torch.Generator("cpu").manual_seed(seed+i),
        so the images do not depend on -n or --batch-size.

        The workers stay up after the cell (warm): the next cell with the same model, dtype, device
        and -n starts at once. The stop button ends the run within one denoising step, keeps the
        finished images and the workers. %distgen --status shows them, %distgen --shutdown stops them
        (nbdist.status() / nbdist.shutdown() in Python); they also stop after --idle-timeout.
        """
        tokens = _split(line)
        args = self.distgen.parser.parse_args(tokens)
        if args.status or args.shutdown or args.idle_timeout is not None:
            return self._lifecycle(args)
        ns = self.shell.user_ns
        as_cell, cell = cell is not None, cell or ""
        shows: list[Any] = []
        try:
            model = self._model(args, ns)
            prompts = _prompts(args, line, cell, ns, as_cell=as_cell)
            options = options_from_args(args)
            if isinstance(options.init, str):  # --init res[3]: a record, image or list of the namespace
                options = options.with_(init=lookup_init(options.init, ns))
            keep = [_StoreResult(ns, args.out)] if args.out and not args.background else []
            shows = (
                [Gallery(background=args.background)]  # a background run: the gallery keeps its own static copy
                if _has_widget_front_end(self.shell)
                else [TerminalProgress(files=bool(options.save_dir))]  # the cell's value (Out[n]) sums it up
            )
            result = generate(model, prompts, options=options, observers=[*keep, *shows], background=args.background)
        except NbdistUsageError as exc:  # named as typed: -n 0 is reported as -n, not --num-processes
            _discard(shows)
            raise UsageError(as_typed(str(exc), tokens)) from None
        except BaseException:  # a failed or interrupted import or load: no header left saying "importing…"
            _discard(shows)
            raise
        if args.background:
            for show in shows:
                if isinstance(show, Gallery):
                    show.allow_stop(result.cancel)  # the kernel is free: the gallery's Stop reaches it
                    show.allow_actions_during(result)  # and its viewer's More like this / Refine
            if args.out:
                ns[args.out] = result
            return None
        return self._finish(result, args.out, ns, keep[0] if keep else None)

    def _finish(self, result: Any, out: str | None, ns: dict[str, Any], stored: _StoreResult | None = None) -> Any:
        """A blocking run's end: the workers' own load refusal, placement, ``-o NAME``, a few end lines."""
        refusal = setup_refusal(result)
        if refusal is not None:  # the workers' own load failed (--device-map): the line a kernel load shows
            raise UsageError(refusal)
        if result.device_map:
            print(f"hf_device_map: {result.device_map}")  # where --device-map balanced put each component
        if out:
            ns[out] = result
            if stored is not None and stored.result is not None:  # after: an interrupted wait that ended early
                ns[out] = stored.result  # and the run that has ended since (or it will put it there itself)
        for text in end_lines(result, out):  # interrupted / per-worker errors: a few lines, no tracebacks
            if not text.startswith("interrupted:") or _has_widget_front_end(self.shell):
                print(text, file=sys.stderr)  # terminal IPython: Out[n] (the result's repr) already says it
        return result

    @staticmethod
    def _lifecycle(args: Any) -> None:
        """``--status``, ``--shutdown``, ``--idle-timeout``: the warm workers themselves, no run."""
        if args.idle_timeout is not None:
            if args.idle_timeout < 0:
                raise UsageError("--idle-timeout must be >= 0 seconds (0: never)")
            the_pool().idle_timeout = args.idle_timeout or None
            print(
                f"nbdist: warm workers stop after {args.idle_timeout:g} s idle"
                if args.idle_timeout
                else "nbdist: warm workers stay until %distgen --shutdown"
            )
        if args.shutdown:
            print("nbdist: workers stopped" if shutdown() else "nbdist: no warm workers")
        if args.status:
            print(repr(status()))

    @staticmethod
    def _model(args: Any, ns: dict[str, Any]) -> Any:
        if args.model and args.pipe:
            raise NbdistUsageError("give --model or --pipe, not both")
        if args.pipe:
            if args.pipe not in ns:
                raise NbdistUsageError(f"--pipe {args.pipe}: no variable named {args.pipe!r}")
            return ns[args.pipe]
        if not args.model:
            raise NbdistUsageError(
                "say which model: --model ID_OR_PATH (or demo, the shipped demo model) or --pipe NAME"
            )
        return args.model


def _split(line: str) -> list[str]:
    """The line's words as a shell splits them: ``-p "a red circle"`` is the prompt without its quotes.

    IPython's ``parse_argstring`` splits with ``posix=False``, which keeps the quotes in the value (a
    prompt or ``--negative "blurry, dark"`` would carry them into the image's text encoder).
    """
    try:
        return arg_split(line, posix=True)
    except ValueError as exc:  # an unbalanced quote
        raise UsageError(f"%distgen {line}: {exc}") from None


def _prompts(args: Any, line: str, cell: str, ns: dict[str, Any], *, as_cell: bool) -> list[str]:
    """The run's prompts: ``--prompts NAME`` then ``-p TEXT`` (like the CLI), or the cell's lines; never both."""
    given = prompts_from_namespace(args.prompts, ns) if args.prompts else []
    given += [p.strip() for p in args.prompt or [] if p.strip()]
    in_cell = parse_prompts(cell, ns)
    if in_cell and (args.prompts or args.prompt):
        raise NbdistUsageError("give the prompts in the cell or with --prompts/-p, not both")
    prompts = given or in_cell
    if not prompts and args.prompts and not args.prompt:
        raise NbdistUsageError(f"--prompts {args.prompts}: no prompts in it")
    if not prompts:
        raise NbdistUsageError(_no_prompts(line, args, as_cell=as_cell))
    return prompts


def _no_prompts(line: str, args: Any, *, as_cell: bool) -> str:
    """Where prompts go, with the user's own line completed into a command that runs as written."""
    example = '"a red circle on a blue background"' if args.model == "demo" else '"a dog"'
    line = " ".join(line.split())
    one_line = f"%distgen {line} -p {example}".replace("  ", " ")
    if as_cell:
        return f"no prompts: write them one per line below %%distgen {line}, or give them on one line: {one_line}"
    return (
        f"no prompts: give them with -p TEXT (repeatable) or --prompts NAME (a list or a file), e.g. {one_line}; "
        "or write them one per line below a %%distgen line"
    )


def give_empty_cell_a_body(lines: list[str]) -> list[str]:
    """An input transformer: a ``%%distgen`` cell with nothing below its first line reaches the magic.

    IPython refuses such a cell itself, suggesting the line magic ``%distgen`` with the same words,
    which has no prompts either; with an (empty) body the magic answers with a form that works.
    """
    if len(lines) == 1 and re.match(r"%%distgen(\s|$)", lines[0]) and not lines[0].rstrip().endswith("?"):
        return [lines[0].rstrip("\n") + "\n", "\n"]
    return lines


def _discard(shows: list[Any]) -> None:
    """Remove what a run that never started displayed early (the gallery header shown while importing)."""
    for show in shows:
        discard = getattr(show, "discard", None)
        if discard is not None:
            discard()


def _has_widget_front_end(shell: Any) -> bool:
    """A Jupyter kernel (front ends there draw widgets); terminal IPython gets a progress line instead."""
    return type(shell).__name__ == "ZMQInteractiveShell" or hasattr(shell, "kernel")
