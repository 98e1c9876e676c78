"""tools/nbrun.py: waits on a kernel channel are cut into short polls (the stall work-around)."""

import asyncio
from queue import Empty

import nbrun
import pytest
from nbclient import NotebookClient


def channel(ready_after: float):
    """An async get_msg whose message is there `ready_after` s from now, but whose poll (like a
    lost wake-up) only sees it when it polls again after that time."""
    start = {}
    polls = []

    async def get_msg(timeout=None):
        now = asyncio.get_running_loop().time()
        start.setdefault("t", now)
        polls.append(timeout)
        if now - start["t"] >= ready_after:
            return {"msg": "reply"}
        await asyncio.sleep(timeout)  # sleeps through the arrival: the missed wake-up
        raise Empty

    return get_msg, polls


def test_a_missed_wake_up_costs_one_slice_not_the_whole_timeout(monkeypatch):
    monkeypatch.setattr(nbrun, "SLICE_S", 0.05)
    get_msg, polls = channel(ready_after=0.12)

    async def wait():
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        msg = await nbrun.sliced(get_msg)(timeout=30)
        return msg, loop.time() - t0

    msg, waited = asyncio.run(wait())
    assert msg == {"msg": "reply"}
    assert waited < 1.0  # not the 30 s a single poll with the full timeout would sleep
    assert all(t <= 0.05 + 1e-9 for t in polls)


def test_the_overall_timeout_still_raises_empty(monkeypatch):
    monkeypatch.setattr(nbrun, "SLICE_S", 0.05)
    get_msg, _ = channel(ready_after=60)
    with pytest.raises(Empty):
        asyncio.run(nbrun.sliced(get_msg)(timeout=0.2))


def test_client_is_a_notebook_client_and_install_is_idempotent(monkeypatch):
    monkeypatch.setattr(NotebookClient, "async_start_new_kernel_client",
                        NotebookClient.async_start_new_kernel_client)  # fmt: skip
    assert issubclass(nbrun.Client, NotebookClient)
    nbrun.install()
    nbrun.install()
    assert NotebookClient.async_start_new_kernel_client is nbrun._start_sliced_kernel_client
