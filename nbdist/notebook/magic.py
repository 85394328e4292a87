"""``%%distgen``: a thin cell magic over ``nbdist.generate``.

Options are declared once with IPython's ``magic_arguments``, so ``%%distgen?`` is the complete help
and a bad option is a one-line ``UsageError``, not a traceback.
"""

from __future__ import annotations

from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

from ..options import DEVICES, DTYPES, SCHEDULES, GenerateOptions, NbdistUsageError
from ..parent.api import generate
from ..parent.results import GenerationResult
from .gallery import Gallery
from .prompts import parse_prompts, prompts_from_namespace

__all__ = ["DistgenMagics"]


@magics_class
class DistgenMagics(Magics):
    """Holds the ``%%distgen`` magic."""

    @magic_arguments()
    @argument("-m", "--model", metavar="ID_OR_PATH", help="hub id or local folder for from_pretrained (safetensors)")
    @argument("--pipe", metavar="NAME", help="use a diffusers pipeline already in the namespace instead of --model")
    @argument("--dtype", choices=DTYPES, help="weights dtype (default: float16 on GPU, float32 on CPU)")
    @argument(
        "-n",
        "--num-processes",
        type=int,
        metavar="N",
        help="workers (default: one per visible GPU; on CPU, up to 4 sharing the cores)",
    )
    @argument("--device", choices=DEVICES, default="auto", help="where workers run (default: GPU if any)")
    @argument("--steps", type=int, default=30, help="denoising steps (default 30)")
    @argument("--guidance", type=float, default=7.5, help="classifier-free guidance scale (default 7.5)")
    @argument("--height", type=int, help="image height in pixels (multiple of the VAE scale factor)")
    @argument("--width", type=int, help="image width in pixels (multiple of the VAE scale factor)")
    @argument("--negative", metavar="TEXT", help="negative prompt for every image")
    @argument("--seed", type=int, help="base seed: image i uses seed+i (default: random, and shown)")
    @argument("-k", "--images-per-prompt", type=int, default=1, metavar="K", help="images per prompt")
    @argument("-b", "--batch-size", type=int, default=1, metavar="B", help="images per forward pass in a worker")
    @argument(
        "--schedule",
        choices=SCHEDULES,
        default="static",
        help="static: split jobs up front (split_between_processes); dynamic: workers pull the next job",
    )
    @argument("--save-dir", metavar="DIR", help="write each PNG (with its parameters) and manifest.jsonl here")
    @argument("--prompts", metavar="NAME", help="take the prompts from a list in the namespace")
    @argument("--allow-pickle", action="store_true", help="allow loading pickle (.bin/.ckpt) weights")
    @argument("-o", "--out", metavar="NAME", help="store the GenerationResult in this variable")
    @cell_magic
    def distgen(self, line: str, cell: str) -> GenerationResult:
        """Generate one image per prompt line (K with -k) on every GPU, streamed into a gallery.

        One prompt per line; blank lines and lines starting with # are skipped; {expr} and $name are
        expanded from the namespace. Image i of the run uses torch.Generator("cpu").manual_seed(seed+i),
        so the images do not depend on -n or --batch-size.
        """
        args = parse_argstring(self.distgen, line)
        ns = self.shell.user_ns
        try:
            model = self._model(args, ns)
            if args.prompts:
                if parse_prompts(cell, ns):
                    raise NbdistUsageError("give the prompts in the cell or with --prompts, not both")
                prompts = prompts_from_namespace(args.prompts, ns)
            else:
                prompts = parse_prompts(cell, ns)
            options = GenerateOptions(
                steps=args.steps,
                guidance=args.guidance,
                height=args.height,
                width=args.width,
                negative=args.negative,
                seed=args.seed,
                images_per_prompt=args.images_per_prompt,
                batch_size=args.batch_size,
                num_processes=args.num_processes,
                dtype=args.dtype,
                device=args.device,
                save_dir=args.save_dir,
                schedule=args.schedule,
                allow_pickle=args.allow_pickle,
            )
            result = generate(model, prompts, options=options, observers=[Gallery()])
        except NbdistUsageError as exc:
            raise UsageError(str(exc)) from None
        if args.out:
            ns[args.out] = result
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
