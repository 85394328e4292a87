"""Drive a real Jupyter kernel over its protocol (jupyter_client) and record what it sends.

Tests look at what a notebook front-end would receive: display data, widget comm messages, errors,
each with the time it arrived, so streaming and timing can be asserted without sleeps.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from jupyter_client.manager import KernelManager


@dataclass
class Received:
    """One iopub message, with its arrival time relative to the execute request."""

    at: float
    msg_type: str
    content: dict[str, Any]
    buffers: list[bytes] = field(default_factory=list)


@dataclass
class Execution:
    """Everything one ``execute`` produced."""

    code: str
    messages: list[Received]
    reply: dict[str, Any]
    wall: float

    @property
    def error(self) -> dict[str, Any] | None:
        for m in self.messages:
            if m.msg_type == "error":
                return m.content
        return None

    def stream(self, name: str | None = None) -> str:
        return "".join(
            m.content["text"] for m in self.messages if m.msg_type == "stream" and name in (None, m.content["name"])
        )

    def of_type(self, *types: str) -> list[Received]:
        return [m for m in self.messages if m.msg_type in types]

    def image_updates(self) -> list[Received]:
        """Widget state updates that carry a finished image's thumbnail (live previews left out)."""
        out = []
        for m in self.of_type("comm_msg"):
            data = m.content.get("data", {})
            if data.get("method") == "update" and m.buffers and ["thumbnail"] in data.get("buffer_paths", []):
                out.append(m)
        return out


class Kernel:
    """A started ipykernel with a blocking client; use as a context manager."""

    def __init__(self, cwd: str | None = None, env: dict[str, str] | None = None) -> None:
        self.km = KernelManager(kernel_name="python3")
        kwargs: dict[str, Any] = {}
        if cwd:
            kwargs["cwd"] = cwd
        if env:
            kwargs["env"] = env
        self.km.start_kernel(**kwargs)
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)

    def __enter__(self) -> Kernel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)

    @property
    def pid(self) -> int:
        return self.km.provisioner.process.pid  # type: ignore[union-attr]

    def execute(self, code: str, timeout: float = 300, on_message: Any = None) -> Execution:
        """Run ``code``; return when the kernel goes idle for it. ``on_message`` sees each message live."""
        start = time.monotonic()
        msg_id = self.kc.execute(code)
        messages: list[Received] = []
        deadline = start + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"kernel did not finish within {timeout} s: {code[:80]!r}")
            msg = self.kc.get_iopub_msg(timeout=remaining)
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            rec = Received(time.monotonic() - start, msg["msg_type"], msg["content"], list(msg.get("buffers") or []))
            if rec.msg_type == "status" and rec.content["execution_state"] == "idle":
                break
            messages.append(rec)
            if on_message is not None:
                on_message(rec)
        reply = self.kc.get_shell_msg(timeout=30)
        while reply["parent_header"].get("msg_id") != msg_id:
            reply = self.kc.get_shell_msg(timeout=30)
        return Execution(code, messages, reply["content"], time.monotonic() - start)

    def value(self, expr: str) -> Any:
        """Evaluate a Python expression in the kernel and return it (through repr/literal_eval)."""
        import ast

        ex = self.execute(f"print(repr({expr}))")
        if ex.error:
            raise RuntimeError(f"{ex.error['ename']}: {ex.error['evalue']}")
        return ast.literal_eval(ex.stream("stdout").strip())


def assert_usage_error(ex: Execution, message: str) -> None:
    """The cell was refused as IPython shows a ``UsageError``: one line on stderr, naming ``message``."""
    err = ex.stream("stderr").strip()
    assert err.startswith("UsageError: ") and message in err and "\n" not in err, (ex.code, err)
