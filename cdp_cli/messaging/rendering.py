"""A second process that renders a journey's messages while the first does the store's work.

Rendering in the sandbox is about half of a large run's time (2 processes render ~92k
messages/s on this machine kind, one ~41k). When a journey has many enrolments due
(RENDER_WORKER_FROM or more), send.py hands each batch's renders to a RenderWorker and goes
on with the next batch while it renders (IN_FLIGHT batches at a time): guards, coupons,
contexts and the store stay in the first process, in the same order as ever, and nothing but
templates runs in the second.

The worker is a fresh Python that inherits none of the first process's files (the store, its
lock), so a killed run never leaves a lock or a store handle behind; it ends when its pipe
closes, whichever side dies. It rebuilds the same TemplateStore (root, limits, SMS segments)
and answers each batch with, per message, what the outbox and the outbound file need
(RenderedMessage), or None for the whole batch when any message did not render cleanly:
the engine then runs the journey again in one process, which gives every failure its usual
outcome (skipped, or the customers held), exactly as a run that never started a worker.
"""

from __future__ import annotations

import contextlib
import json
import pickle
import queue
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any, NamedTuple, cast

from cdp_cli import workers
from cdp_cli.errors import CdpError, TemplateError
from cdp_cli.messaging import links
from cdp_cli.messaging.channels import CHANNELS, Outbound, placeholder_problem
from cdp_cli.messaging.outbox import file_line
from cdp_cli.messaging.templates import TemplateStore
from cdp_cli.workers import frame, read_frame

# Due enrolments from which a journey's run renders in a second process; below, starting one
# (about 0.3 s of a fresh Python importing Jinja) costs more than it gives.
RENDER_WORKER_FROM = 20_000
# Batches handed to the worker and not collected yet: one rendering, one waiting in its pipe.
IN_FLIGHT = 2
_GONE = object()  # the reader thread's answer when the worker's stdout ends


class ContextHeader(NamedTuple):
    """What the contexts of a batch's messages share: sent to the worker once per batch."""

    profile_columns: tuple[str, ...]
    feature_columns: tuple[str, ...]
    brand: dict[str, Any]
    journey: dict[str, str]  # {"name": ...}
    step: dict[str, str]


# One customer's part of a message context: one_id, profile row (or None), features row
# without its one_id (or None), tags (or None), coupon, WeChat openid as stored ('appid:openid'),
# push device, link. Plain tuples: a million of them cross the pipe.
ContextParts = tuple[
    str, tuple[Any, ...] | None, tuple[Any, ...] | None, dict[str, str] | None,
    dict[str, Any] | None, str | None, str | None, str,
]  # fmt: skip
# One message to render: channel, template, its ContextParts, the QR image's path relative to
# outbound/ (put in the payload) or None, and the rest of its outbound line (outbox.file_line's
# `head`: message_id, to, journey, step, one_id, coupon, link).
RenderJob = tuple[str, str, ContextParts, str | None, tuple[Any, ...]]
# A message rendered cleanly: its payload as the outbox stores it (JSON), the parts it is
# billed for, and its outbound line in UTF-8 or, when the first process makes the lines of
# the batch (RenderWorker.makes_lines), its body (the payload before JSON).
RenderedMessage = tuple[str, int, bytes | dict[str, Any]]


def message_context(
    header: ContextHeader, parts: ContextParts, message_id: str | None
) -> dict[str, Any]:
    """What a template sees of one message: the one home of its shape, in either process.
    `message_id` None: its unsubscribe link is left out (fixtures' examples have one, and a
    message whose template and channel do not use it: TemplateStore.needs_unsubscribe)."""
    one_id, profile, features, tags, coupon, openid, device, link = parts
    context = {
        "customer": dict(zip(header.profile_columns, profile, strict=True))
        if profile is not None
        else {"one_id": one_id},
        "features": dict(zip(header.feature_columns, features, strict=True))
        if features is not None
        else {},
        "tags": tags if tags is not None else {},
        "coupon": coupon,
        "journey": header.journey,
        "step": header.step,
        "wechat": {"openid": openid.split(":", 1)[-1] if openid else None,
                   "appid": openid.split(":", 1)[0] if openid and ":" in openid else None},
        "device": device,
        "brand": header.brand,
        "link": link,
    }  # fmt: skip
    if message_id is not None:
        context["unsubscribe"] = links.unsubscribe_url(header.brand.get("url"), message_id)
    return context


def render_outbound(
    templates: TemplateStore,
    header: ContextHeader,
    channel: str,
    template: str,
    parts: ContextParts,
    message_id: str,
) -> Outbound:
    """One message rendered from its context, the same in either process; its unsubscribe
    link made only where the channel or template may show it (TemplateStore.needs_unsubscribe).
    TemplateError when it does not render."""
    unsubscribe = templates.needs_unsubscribe(channel, template)
    context = message_context(header, parts, message_id if unsubscribe else None)
    return templates.render(channel, template, context)


@dataclass
class InFlight:
    """The batch the worker is rendering: its customers and link codes (not in the store
    yet), and what writes its outbox once its messages are back (send.py)."""

    one_ids: set[str]
    link_codes: set[str]
    written: Callable[[list[RenderedMessage]], None]


class RenderFailed(Exception):
    """A message of the batch did not render cleanly in the worker: run it in one process."""


def render_message(
    templates: TemplateStore, header: ContextHeader, job: RenderJob, make_line: bool = True
) -> RenderedMessage | None:
    """Render one message as send._send_one does; None when it fails or is a placeholder."""
    channel, template, parts, qr, head = job
    try:
        outbound = render_outbound(templates, header, channel, template, parts, head[0])
    except TemplateError:
        return None
    if placeholder_problem(channel, template, outbound.body):
        return None
    if qr is not None:
        outbound.body["qr"] = qr
    payload = json.dumps(outbound.body, ensure_ascii=False)
    if not make_line:
        return payload, outbound.billed_parts, outbound.body
    return (
        payload,
        outbound.billed_parts,
        file_line(CHANNELS[channel], head, outbound.body).encode(),
    )


def render_batch(
    templates: TemplateStore, header: ContextHeader, jobs: list[RenderJob], make_lines: bool
) -> list[RenderedMessage] | None:
    """Every message of a batch, or None when any of them did not render cleanly."""
    rendered = []
    for job in jobs:
        message = render_message(templates, header, job, make_lines)
        if message is None:
            return None
        rendered.append(message)
    return rendered


def serve(jobs: IO[bytes], results: IO[bytes]) -> None:
    """The worker's loop: the TemplateStore's settings, then a batch of jobs in and its rendered
    messages out, each a frame, until the first process closes the pipe (or dies)."""
    try:
        root, limits, sms_max_segments = read_frame(jobs)
        templates = TemplateStore(root, limits=limits, sms_max_segments=sms_max_segments)
        while True:
            header, batch, make_lines = read_frame(jobs)
            try:
                answer = render_batch(templates, ContextHeader(*header), batch, make_lines)
            except Exception:  # one process reproduces it, with its own message
                answer = None
            results.write(frame(answer))
            results.flush()
    except (EOFError, OSError):  # the first process has gone, or is done
        return


class RenderWorker:
    """The second process, with up to IN_FLIGHT batches handed to it and not collected yet:
    while it renders one, the next is already waiting in its pipe, and the first process
    writes the outbox of the one before. Two threads of this process carry the pipes (one
    writes the batches, one reads the answers), so neither process ever waits on a full pipe.

    A plain `python -c` (workers.start): it inherits no file of this process, and is not
    sent the terminal's Ctrl-C (this process ends it)."""

    def __init__(self, templates: TemplateStore) -> None:
        self.journey = ""  # the journey it renders for, named if it dies
        self.process = workers.start("cdp_cli.messaging.rendering", "worker_main")
        assert self.process.stdin is not None and self.process.stdout is not None
        self._jobs, self._results = self.process.stdin, self.process.stdout
        self.in_flight = 0
        # Whether the worker makes the next batch's outbound lines: yes, unless the first
        # process had to wait for its last answer (the worker is then the busier of the two).
        # Which one is busier depends on the box (SQLite's writes in the first, Jinja in the
        # worker: at 1M one box's first process waited 16-22 s, another's worker 14 s), so the
        # lines go, batch by batch, to the side with time to spare. They are the same either way.
        self.makes_lines = True
        self._outgoing: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._answers: queue.SimpleQueue[object] = queue.SimpleQueue()
        settings = (templates.root, templates.limits, templates.sms_max_segments)
        self._outgoing.put(frame(settings))
        self._threads = [
            threading.Thread(target=target, name=f"render worker {name}", daemon=True)
            for name, target in (("writer", self._write), ("reader", self._read))
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, header: ContextHeader, jobs: list[RenderJob]) -> None:
        assert self.in_flight < IN_FLIGHT, "collect() the oldest batch in flight first"
        batch = (tuple(header), jobs, self.makes_lines)  # a plain tuple: marshal writes it
        self._outgoing.put(frame(batch))
        self.in_flight += 1

    def collect(self) -> list[RenderedMessage]:
        """The oldest batch in flight, rendered; RenderFailed when a message did not render."""
        assert self.in_flight, "nothing submitted"
        self.makes_lines = not self._answers.empty()  # the answer was ready: this side is busier
        answer = self._answers.get()
        if answer is _GONE:
            raise self._died()
        self.in_flight -= 1
        if answer is None:
            raise RenderFailed(self.journey)
        return list(cast("list[RenderedMessage]", answer))

    def drain(self) -> None:
        """Collect and drop every batch still in flight (after RenderFailed: the journey runs
        again in one process), so that the worker is idle for the next journey."""
        while self.in_flight:
            with contextlib.suppress(RenderFailed):
                self.collect()

    def close(self) -> None:
        """Let the worker end (its stdin closes once the batches handed to it are written),
        and wait for it."""
        self._outgoing.put(None)
        self._threads[0].join(timeout=5)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)
        self.stop()

    def stop(self) -> None:
        """End the worker now (after an error in this process)."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self._outgoing.put(None)
        for thread in self._threads:  # the pipes break or end with the process
            thread.join(timeout=5)
        for pipe in (self._jobs, self._results):
            with contextlib.suppress(OSError):
                pipe.close()

    def _write(self) -> None:
        """The writer thread: each batch's frame to the worker, in order, until None."""
        try:
            while (data := self._outgoing.get()) is not None:
                self._jobs.write(data)
                self._jobs.flush()
        except OSError:  # the worker has gone: the reader tells collect()
            pass
        with contextlib.suppress(OSError):
            self._jobs.close()

    def _read(self) -> None:
        """The reader thread: each answer of the worker, in order, until its stdout ends."""
        try:
            while True:
                self._answers.put(read_frame(self._results))
        except (EOFError, OSError, pickle.UnpicklingError, ValueError, TypeError):
            self._answers.put(_GONE)

    def _died(self) -> CdpError:
        how = workers.exit_description(self.process)
        return CdpError(
            f"journey {self.journey}: the process rendering its messages ended ({how}); "
            "nothing of this journey's run was kept: run it again"
        )


def worker_main() -> None:
    """The worker process: jobs on stdin, answers on stdout (anything printed by mistake goes
    to stderr instead)."""
    serve(sys.stdin.buffer, workers.answers_pipe())


class Workers:
    """The one RenderWorker of a command, started when a journey first has `threshold`
    enrolments due or more (None: never), and shared by the journeys after it."""

    def __init__(self, templates: TemplateStore, threshold: int | None) -> None:
        self.templates, self.threshold = templates, threshold
        self.worker: RenderWorker | None = None

    def for_journey(self, journey: str, due: int) -> RenderWorker | None:
        if self.threshold is None or due < self.threshold:
            return None
        if self.worker is None:
            try:
                self.worker = RenderWorker(self.templates)
            except OSError:  # no second process to be had (no fork, no Python): render here
                self.threshold = None
                return None
        self.worker.journey = journey
        return self.worker

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()
            self.worker = None

    def stop(self) -> None:
        """End the worker now: an error left a batch in flight."""
        if self.worker is not None:
            self.worker.stop()
            self.worker = None
