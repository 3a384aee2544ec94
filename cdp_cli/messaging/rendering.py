"""A second process that renders a journey's messages while the first does the store's work.

Rendering in the sandbox is about half of a large run's time (2 processes render ~92k
messages/s on this machine kind, one ~41k). When a journey has many enrolments due
(RENDER_WORKER_FROM or more), send.py hands each batch's renders to a RenderWorker and goes
on with the next batch while it renders: guards, coupons, contexts and the store stay in the
first process, in the same order as ever, and nothing but templates runs in the second.

The worker is started with `spawn`: a fresh Python that inherits none of the first process's
files (the store, its lock), so a killed run never leaves a lock or a store handle behind; it
ends when its pipe closes, whichever side dies. It rebuilds the same TemplateStore (root,
limits, SMS segments) and answers each batch with, per message, what the outbox and the
outbound file need (RenderedMessage), or None for the whole batch when any message did not
render cleanly: the engine then runs the journey again in one process, which gives every
failure its usual outcome (skipped, or the customers held), exactly as a run that never
started a worker.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import signal
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, NamedTuple

from cdp_cli.errors import CdpError, TemplateError
from cdp_cli.messaging.channels import CHANNELS, placeholder_problem
from cdp_cli.messaging.outbox import file_line
from cdp_cli.messaging.sandbox import Limits
from cdp_cli.messaging.templates import TemplateStore

# Due enrolments from which a journey's run renders in a second process; below, starting one
# (about 0.3 s of a fresh Python importing Jinja) costs more than it gives.
RENDER_WORKER_FROM = 20_000


class RenderJob(NamedTuple):
    """One message to render, and what its line in the outbound file carries besides."""

    channel: str
    template: str
    context: dict[str, Any]
    qr: str | None  # the QR image's path relative to outbound/, put in the payload
    # message_id, to, journey, step, one_id, coupon, link: outbox.file_line's `head`
    head: tuple[Any, ...]


class RenderedMessage(NamedTuple):
    """A message rendered cleanly: its payload as the outbox stores it, and its file line."""

    payload: str
    billed_parts: int
    line: str


class RenderFailed(Exception):
    """A message of the batch did not render cleanly in the worker: run it in one process."""


def render_message(templates: TemplateStore, job: RenderJob) -> RenderedMessage | None:
    """Render one message as send._send_one does; None when it fails or is a placeholder."""
    try:
        outbound = templates.render(job.channel, job.template, job.context)
    except TemplateError:
        return None
    if placeholder_problem(job.channel, job.template, outbound.body):
        return None
    if job.qr is not None:
        outbound.body["qr"] = job.qr
    return RenderedMessage(
        json.dumps(outbound.body, ensure_ascii=False),
        outbound.billed_parts,
        file_line(CHANNELS[job.channel], job.head, outbound.body),
    )


def render_batch(templates: TemplateStore, jobs: list[RenderJob]) -> list[RenderedMessage] | None:
    """Every message of a batch, or None when any of them did not render cleanly."""
    rendered = []
    for job in jobs:
        message = render_message(templates, job)
        if message is None:
            return None
        rendered.append(message)
    return rendered


def _serve(
    root: Path, limits: Limits, sms_max_segments: int, jobs: Connection, results: Connection
) -> None:
    """The worker's loop: a batch of jobs in, its rendered messages out, until the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the first process's to handle
    templates = TemplateStore(root, limits=limits, sms_max_segments=sms_max_segments)
    while True:
        try:
            batch = jobs.recv()
            if batch is None:
                return
            try:
                answer = render_batch(templates, batch)
            except Exception:  # one process reproduces it, with its own message
                answer = None
            results.send(answer)
        except (EOFError, OSError):  # the first process has gone: nothing left to do
            return


class RenderWorker:
    """The second process, one batch in flight at a time: submit() a batch, collect() it
    before submitting the next (so neither side ever waits on a full pipe)."""

    def __init__(self, templates: TemplateStore, journey: str) -> None:
        self.journey = journey
        context = multiprocessing.get_context("spawn")
        jobs_out, self._jobs = context.Pipe(duplex=False)
        self._results, results_in = context.Pipe(duplex=False)
        self.process = context.Process(
            target=_serve,
            args=(templates.root, templates.limits, templates.sms_max_segments, jobs_out,
                  results_in),
            name="cdp journey run: rendering",
            daemon=True,
        )  # fmt: skip
        self.process.start()
        jobs_out.close()  # the worker's ends: the worker alone holds them now
        results_in.close()
        self.in_flight = False

    def submit(self, jobs: list[RenderJob]) -> None:
        assert not self.in_flight, "collect() the batch in flight first"
        try:
            self._jobs.send(jobs)
        except OSError:
            raise self._died() from None
        self.in_flight = True

    def collect(self) -> list[RenderedMessage]:
        """The batch in flight, rendered; RenderFailed when a message did not render."""
        assert self.in_flight, "nothing submitted"
        try:
            answer = self._results.recv()
        except (EOFError, OSError):
            raise self._died() from None
        self.in_flight = False
        if answer is None:
            raise RenderFailed(self.journey)
        return list(answer)

    def close(self) -> None:
        """Ask the worker to end, and wait for it (killing it if it does not end)."""
        with contextlib.suppress(OSError):
            self._jobs.send(None)
        self.process.join(timeout=5)
        self.stop()

    def stop(self) -> None:
        """End the worker now (after an error in the first process)."""
        if self.process.is_alive():
            self.process.kill()
        self.process.join()
        self._jobs.close()
        self._results.close()

    def _died(self) -> CdpError:
        self.process.join(timeout=5)
        code = self.process.exitcode
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit {code}"
        return CdpError(
            f"journey {self.journey}: the process rendering its messages ended ({how}); "
            "nothing of this journey's run was kept: run it again"
        )
