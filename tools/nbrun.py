"""Execute notebooks with nbclient without the runner's stalls (issue 23).

The stall: now and then a notebook run sat idle until a timeout ran out (600 s, the cell
timeout), right after an ``ipywidgets.interact`` cell. nbclient keeps a copy of every Output
widget (``nbclient.output_widget.OutputWidget``), and every output the kernel sends into one
(interact's figure) is echoed back to the kernel, unawaited, on the shell socket, while
another coroutine awaits that same asyncio zmq socket for the cell's execute_reply. Now and
then the reply's wake-up is lost (nbclient issue #312), and the waiting ``poll`` returns only
when its timeout runs out: the cell timeout on the shell channel, the iopub timeout (4 s) on
the output channel.

The work-around here: every wait on a kernel channel is cut into slices of ``SLICE_S``
seconds. Each new poll reads the socket's state afresh (pyzmq checks ``EVENTS`` before it
sleeps), so a lost wake-up costs at most one slice; the overall timeouts are unchanged.
``Client`` is nbclient's ``NotebookClient`` with that change (tools/bench.py runs notebooks
with it); ``install()`` makes every ``NotebookClient`` do it, for the book's build, where
myst-nb creates the client itself.
"""

from __future__ import annotations

import time
from datetime import datetime
from queue import Empty

from nbclient import NotebookClient

SLICE_S = 0.5
CPU_BUDGET_S = 120.0  # a notebook's kernel CPU seconds that `make test` allows (conftest.py)
_start_kernel_client = NotebookClient.async_start_new_kernel_client


def sliced(get_msg_once):
    """A channel's async get_msg(timeout), polled afresh every SLICE_S s until `timeout`."""

    async def get_msg(timeout: float | None = None):
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = SLICE_S if deadline is None else min(SLICE_S, deadline - time.monotonic())
            try:
                return await get_msg_once(timeout=max(0.0, left))
            except Empty:
                if deadline is not None and time.monotonic() >= deadline:
                    raise

    get_msg.sliced = True
    return get_msg


async def _start_sliced_kernel_client(self):
    kc = await _start_kernel_client(self)
    for channel in (kc.shell_channel, kc.iopub_channel):
        if not getattr(channel.get_msg, "sliced", False):
            channel.get_msg = sliced(channel.get_msg)
    return kc


class Client(NotebookClient):
    """nbclient's NotebookClient whose waits on the kernel are sliced (see the docstring)."""

    async_start_new_kernel_client = _start_sliced_kernel_client


def install() -> None:
    """Slice the waits of every NotebookClient of this process (idempotent)."""
    NotebookClient.async_start_new_kernel_client = _start_sliced_kernel_client


# --------------------------------------------------------------------------- the stall, measured


def stall_notebook(cells: int = 6):
    """A notebook of `cells` interact cells, each showing a figure in its Output widget."""
    from nbformat.v4 import new_code_cell, new_notebook

    setup = "import ipywidgets as widgets, numpy as np\nimport matplotlib.pyplot as plt"
    show = (
        "def show(t):\n    fig, ax = plt.subplots(figsize=(9, 9))\n"
        "    ax.imshow(np.random.rand(200, 200))\n    ax.set_title(str(t))\n    plt.show()\n"
    )
    body = [new_code_cell(setup)]
    for k in range(cells):
        body.append(new_code_cell(f"{show}widgets.interact(show, t=({k}, {k + 10}));"))
        body.append(new_code_cell(f"print({k})"))
    return new_notebook(cells=body)


def cell_seconds(nb) -> list[float]:
    """Each executed code cell's time from nbclient's timing metadata (busy -> idle)."""
    out = []
    for cell in nb.cells:
        ex = cell.get("metadata", {}).get("execution", {})
        if "iopub.status.busy" in ex and "iopub.status.idle" in ex:
            busy, idle = (datetime.fromisoformat(ex[k].replace("Z", "+00:00"))
                          for k in ("iopub.status.busy", "iopub.status.idle"))  # fmt: skip
            out.append((idle - busy).total_seconds())
    return out


def count_stalls(runs: int, client_class, timeout: int = 15) -> list[float]:
    """Run `stall_notebook` `runs` times; returns each run's seconds spent outside its cells
    (kernel start and stop take a few; a lost wake-up adds the `timeout`)."""
    outside = []
    for _ in range(runs):
        nb = stall_notebook()
        client = client_class(nb, timeout=timeout, kernel_name="python3", record_timing=True)
        start = time.perf_counter()
        client.execute()
        outside.append(time.perf_counter() - start - sum(cell_seconds(nb)))
    return outside


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python tools/nbrun.py",
        description="Count the runner's stalls on a notebook of widget cells: nbclient as it "
        "is (--plain) or with the sliced waits.",
    )
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--plain", action="store_true", help="nbclient's own NotebookClient")
    args = parser.parse_args(argv)
    name, client_class = ("plain", NotebookClient) if args.plain else ("sliced", Client)
    outside = count_stalls(args.runs, client_class)
    stalls = sum(s > 12 for s in outside)  # a stall adds the 15 s timeout; a start takes ~2 s
    print(f"{name}: {stalls} of {args.runs} runs stalled (over 12 s outside the cells); "
          f"outside the cells: median {sorted(outside)[len(outside) // 2]:.1f} s, "
          f"max {max(outside):.1f} s")  # fmt: skip
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
