"""`cdp journey run` rendering in a second process (messaging/rendering.py): the same messages,
files and store as one process, byte for byte, on the sample; a message the worker cannot
render runs the journey again in one process; a worker that dies ends the run in one line and
loses or doubles nothing. The hidden `--render-worker-from N` forces the second process on
these small audiences (rendering.RENDER_WORKER_FROM is the default)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from cdp_cli import workers
from cdp_cli.cli import cli
from cdp_cli.messaging import engine, rendering
from cdp_cli.messaging.channels import CHANNELS
from cdp_cli.messaging.rendering import RENDER_WORKER_FROM, RenderWorker
from tests.killharness import compare, duplicate_messages, snapshot

NOW = "2026-11-15 10:30"
FORCE = ("--render-worker-from", "1")


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped project on the sample data, ingested, resolved and tagged; no journey run."""
    from tests.ops_helpers import sample_tagged_once

    return sample_tagged_once(tmp_path_factory)


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[RenderWorker]:
    """Every RenderWorker started (the real one, only noted)."""
    workers: list[RenderWorker] = []
    init = RenderWorker.__init__

    def noted(self: RenderWorker, *args: Any) -> None:
        init(self, *args)
        workers.append(self)

    monkeypatch.setattr(RenderWorker, "__init__", noted)
    return workers


def copy(sample: Path, folder: Path) -> Path:
    shutil.copytree(sample, folder)
    return folder


def journey_run(folder: Path, *extra: str) -> Result:
    args = ["--config", str(folder / "cdp.yaml"), "journey", "run", "--now", NOW, *extra]
    return CliRunner().invoke(cli, args, catch_exceptions=False)


ODD = "【花漾】{{ (100 / (customer.records - 1))|round }} {{ coupon.code }}"  # fails for some


def in_one_and_two(
    sample: Path, tmp_path: Path, journey: tuple[str, str], sms: tuple[str, str], *names: str
) -> tuple[Result, Result]:
    """Two copies of the sample project with a journey file and an SMS template (name,
    text), the journeys `names` (every one, if none) run in one process in the first and in
    two in the second; both succeed."""
    for name in ("one", "two"):
        folder = copy(sample, tmp_path / name)
        (folder / "journeys" / journey[0]).write_text(journey[1], encoding="utf-8")
        (folder / "templates" / "sms" / sms[0]).write_text(sms[1], encoding="utf-8")
    one = journey_run(tmp_path / "one", *names, "--json")
    two = journey_run(tmp_path / "two", *names, "--json", *FORCE)
    assert one.exit_code == two.exit_code == 0, two.output
    return one, two


def outbound_files(folder: Path) -> dict[str, bytes]:
    root = folder / "outbound"
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def messages(folder: Path) -> list[tuple[Any, ...]]:
    """The outbox in the order it was written, but for where the files are and when."""
    conn = sqlite3.connect(folder / "cdp.db")
    try:
        columns = [r[1] for r in conn.execute("PRAGMA table_info(messages)")]
        kept = [c for c in columns if c not in ("file", "written_at")]
        listed = ", ".join(kept)
        return conn.execute(f"SELECT {listed} FROM messages ORDER BY rowid").fetchall()
    finally:
        conn.close()


def without_seconds(output: str) -> list[dict[str, Any]]:
    results = json.loads(output)
    for result in results:
        result.pop("seconds")
        result["files"] = [Path(f).name for f in result["files"]]
    return results


def test_two_processes_send_what_one_sends_on_the_sample(
    sample: Path, tmp_path: Path, started: list[RenderWorker]
) -> None:
    one = journey_run(copy(sample, tmp_path / "one"), "--json")
    assert one.exit_code == 0, one.output
    assert started == []  # the sample is far below RENDER_WORKER_FROM: one process
    assert RENDER_WORKER_FROM > 1000
    two = journey_run(copy(sample, tmp_path / "two"), "--json", *FORCE)
    assert two.exit_code == 0, two.output
    assert len(started) == 1  # one worker for the command, shared by its journeys
    assert started[0].process.returncode == 0  # ended when the run was done
    assert without_seconds(two.output) == without_seconds(one.output)
    files = outbound_files(tmp_path / "one")
    assert len(files) >= 5
    assert outbound_files(tmp_path / "two") == files  # byte for byte, under the same names
    assert messages(tmp_path / "two") == messages(tmp_path / "one")
    assert len(messages(tmp_path / "one")) > 100
    assert compare(snapshot(tmp_path / "two", tmp_path), snapshot(tmp_path / "one", tmp_path)) == []


@pytest.mark.parametrize("worker_makes_lines", [True, False])
def test_the_outbound_lines_are_the_same_whichever_process_makes_them(
    sample: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, worker_makes_lines: bool
) -> None:
    """The worker makes a batch's lines unless the first process waited for its last answer
    (RenderWorker.makes_lines, which the box's speed decides): forced either way, the files
    and the outbox are one process's."""
    submit, collect = RenderWorker.submit, RenderWorker.collect
    made: list[type] = []

    def forced(self: RenderWorker, *args: Any) -> None:
        self.makes_lines = worker_makes_lines
        submit(self, *args)

    def noted(self: RenderWorker) -> list[rendering.RenderedMessage]:
        rendered = collect(self)
        made.extend(type(message[2]) for message in rendered)
        return rendered

    monkeypatch.setattr(RenderWorker, "submit", forced)
    monkeypatch.setattr(RenderWorker, "collect", noted)
    one = journey_run(copy(sample, tmp_path / "one"), "--json")
    two = journey_run(copy(sample, tmp_path / "two"), "--json", *FORCE)
    assert one.exit_code == two.exit_code == 0, two.output
    assert set(made) == {bytes if worker_makes_lines else dict}
    assert outbound_files(tmp_path / "two") == outbound_files(tmp_path / "one")
    assert messages(tmp_path / "two") == messages(tmp_path / "one")


# A branch right after a send reads what the send queued (`received`): in two processes, the
# batch the worker renders is written first.
BRANCHING = """name: follow
entry: {when: "name is not null"}
transactional: true
steps:
  - send: {channel: sms, template: hello}
  - branch:
      when: "received"
      then:
        - send: {channel: sms, template: hello, link: "https://www.huayang.example.com/b"}
"""


def test_a_branch_after_a_send_sees_its_messages_in_two_processes(
    sample: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine, "_in_one_process", None)  # every message renders in the worker
    template = "【花漾】{{ customer.name|default_name }}, 你好 {{ link }}"
    one, two = in_one_and_two(
        sample, tmp_path, ("follow.yaml", BRANCHING), ("hello.txt", template), "follow"
    )
    steps = {row[5] for row in messages(tmp_path / "one") if row[7] == "written"}
    assert len(steps) == 2, steps  # the branch's send went out
    assert without_seconds(two.output) == without_seconds(one.output)
    assert outbound_files(tmp_path / "two") == outbound_files(tmp_path / "one")
    assert messages(tmp_path / "two") == messages(tmp_path / "one")


FAILING = """name: odd
entry: {when: "name is not null"}
steps:
  - send: {channel: sms, template: odd, coupon: WINBACK20}
"""


def test_a_message_the_worker_cannot_render_sends_the_journey_through_one_process(
    sample: Path, tmp_path: Path, started: list[RenderWorker], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A template that fails for some customers (a division by their records less one): their
    messages are skipped and their coupons go to the next customer, as in one process."""
    replays: list[str] = []
    in_one_process = engine._in_one_process

    def noted(run: Any) -> Any:
        replays.append(run.journey.name)
        return in_one_process(run)

    monkeypatch.setattr(engine, "_in_one_process", noted)
    one, two = in_one_and_two(sample, tmp_path, ("odd.yaml", FAILING), ("odd.txt", ODD), "odd")
    assert replays == ["odd"] and len(started) == 1
    [result] = without_seconds(one.output)
    failed = [k for k in result["skipped"] if k.startswith("template")]
    assert result["sent"]["sms"] > 0 and failed, result  # some rendered, not all
    assert without_seconds(two.output) == without_seconds(one.output)
    assert outbound_files(tmp_path / "two") == outbound_files(tmp_path / "one")
    assert messages(tmp_path / "two") == messages(tmp_path / "one")


def test_two_batches_in_flight_and_a_failed_one_leave_the_worker_ready_for_the_next_journey(
    sample: Path, tmp_path: Path, started: list[RenderWorker], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Small batches: the worker holds two at a time (one rendering, one waiting) while the
    first process walks a third; a batch that fails among them sends its journey through one
    process, and the journeys after it use the same worker. Everything as in one process."""
    monkeypatch.setattr(engine, "BATCH", 7)
    most: list[int] = []
    submit = RenderWorker.submit

    def counted(self: RenderWorker, *args: Any) -> None:
        submit(self, *args)
        most.append(self.in_flight)

    monkeypatch.setattr(RenderWorker, "submit", counted)
    journey = ("aa_odd.yaml", FAILING.replace("name: odd", "name: aa_odd"))
    one, two = in_one_and_two(sample, tmp_path, journey, ("odd.txt", ODD))
    assert len(started) == 1 and max(most) == rendering.IN_FLIGHT == 2
    assert without_seconds(two.output) == without_seconds(one.output)
    assert outbound_files(tmp_path / "two") == outbound_files(tmp_path / "one")
    assert messages(tmp_path / "two") == messages(tmp_path / "one")


def test_the_worker_imports_the_first_process_cdp_cli_not_one_in_the_current_folder(
    sample: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A `cdp_cli` folder where the command runs (another commit's checkout) stays unused."""
    stray = tmp_path / "elsewhere" / "cdp_cli"
    stray.mkdir(parents=True)
    (stray / "__init__.py").write_text("raise ImportError('the wrong cdp_cli')\n")
    folder = copy(sample, tmp_path / "project")
    monkeypatch.chdir(stray.parent)
    result = journey_run(folder, *FORCE)
    assert result.exit_code == 0, result.output


def test_a_worker_that_dies_ends_the_run_in_one_line_and_the_rerun_loses_nothing(
    sample: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = copy(sample, tmp_path / "reference")
    assert journey_run(reference).exit_code == 0
    folder = copy(sample, tmp_path / "project")
    collect = RenderWorker.collect
    killed: list[int] = []

    def killed_first(self: RenderWorker) -> Any:
        if not killed:  # as the OOM killer would, while it renders a batch
            os.kill(self.process.pid, signal.SIGKILL)
            killed.append(self.process.pid)
        return collect(self)

    monkeypatch.setattr(RenderWorker, "collect", killed_first)
    monkeypatch.setenv("CDP_DEBUG", "")  # the user's one line, not a traceback
    died = journey_run(folder, *FORCE)
    assert died.exit_code == 1
    [line] = died.stderr.strip().splitlines()[-1:]
    assert line.startswith("Error: journey ") and line.endswith(
        ": the process rendering its messages ended (killed by signal 9); nothing of this "
        "journey's run was kept: run it again"
    ), died.stderr
    monkeypatch.setattr(RenderWorker, "collect", collect)
    rerun = journey_run(folder, *FORCE)
    assert rerun.exit_code == 0, rerun.output
    assert duplicate_messages(folder) == []
    assert compare(snapshot(folder, tmp_path), snapshot(reference, tmp_path)) == []


def test_the_worker_renders_as_one_process_does(sample: Path) -> None:
    """render_message, given a batch's header and a message's parts, makes the same payload and
    outbound line as the first process makes of the same context; or hands back the body the
    first process makes that line from, when it makes the batch's lines itself."""
    from cdp_cli.messaging.outbox import file_line
    from cdp_cli.messaging.templates import TemplateStore

    templates = TemplateStore(sample / "templates")
    header = rendering.ContextHeader(
        ("one_id", "name"), ("total_spent",), {"name": "花漾", "url": "https://h.example.com"},
        {"name": "j"}, {"name": "s"},
    )  # fmt: skip
    parts: rendering.ContextParts = (
        "C1",
        ("C1", "王芳"),
        (120.5,),
        {"preferred_category": "护肤"},
        None,
        "wxapp:o123",
        None,
        "https://l",
    )
    head = ("j:1:s", "+8613800000001", "j", "s", "C1", None, None)
    job: rendering.RenderJob = ("sms", "member_day", parts, None, head)
    rendered = rendering.render_message(templates, header, job)
    body_only = rendering.render_message(templates, header, job, make_line=False)
    assert rendered is not None and body_only is not None
    context = rendering.message_context(header, parts, "j:1:s")
    assert context["customer"] == {"one_id": "C1", "name": "王芳"}
    assert context["wechat"] == {"openid": "o123", "appid": "wxapp"}
    outbound = templates.render("sms", "member_day", context)
    payload, billed_parts, line = rendered
    assert json.loads(payload) == outbound.body and billed_parts == outbound.billed_parts
    assert body_only[:2] == rendered[:2] and body_only[2] == outbound.body
    # the line the worker makes is the one the first process makes of its own renders
    assert line == file_line(CHANNELS["sms"], head, outbound.body).encode()


def test_the_unsubscribe_link_is_made_only_for_a_message_that_uses_it(
    sample: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its code is a SHA-256 of the message id: every email gets it (the List-Unsubscribe
    header), and a message of another channel whose template prints `unsubscribe`; a template
    that does not print it costs no hash. The same in either process (render_message is the
    worker's, _send_one the first process's: both go through TemplateStore.needs_unsubscribe)."""
    from cdp_cli.messaging import links
    from cdp_cli.messaging.templates import TemplateStore

    root = tmp_path / "templates"
    shutil.copytree(sample / "templates", root)
    (root / "sms" / "bye.txt").write_text("【花漾】再见 退订 {{ unsubscribe }}", encoding="utf-8")
    made: list[str] = []
    unsubscribe_url = links.unsubscribe_url

    def noted(brand_url: str | None, message_id: str) -> str | None:
        made.append(message_id)
        return unsubscribe_url(brand_url, message_id)

    monkeypatch.setattr(links, "unsubscribe_url", noted)
    templates = TemplateStore(root)
    header = rendering.ContextHeader(
        ("one_id", "name"), (), {"name": "花漾", "url": "https://h.example.com"},
        {"name": "j"}, {"name": "s"},
    )  # fmt: skip
    parts: rendering.ContextParts = (
        "C1", ("C1", "王芳"), None, {"preferred_category": "护肤"}, None, None, None, "https://l",
    )  # fmt: skip

    def render(channel: str, template: str, message_id: str) -> dict[str, Any]:
        head = (message_id, "+8613800000001", "j", "s", "C1", None, None)
        rendered = rendering.render_message(
            templates, header, (channel, template, parts, None, head)
        )
        assert rendered is not None
        return dict(json.loads(rendered[0]))

    assert "unsubscribe" not in render("sms", "member_day", "j:1:s")["text"]
    assert made == []  # the template does not print it: no hash made
    url = f"https://h.example.com/unsubscribe?m={links.short_code('j:2:s')}"
    assert render("sms", "bye", "j:2:s")["text"] == f"【花漾】再见 退订 {url}"
    email = render("email", "member_day", "j:3:s")
    url = f"https://h.example.com/unsubscribe?m={links.short_code('j:3:s')}"
    assert email["list_unsubscribe"] == f"<{url}>" and url in email["html"]
    assert made == ["j:2:s", "j:3:s"]
    assert [templates.needs_unsubscribe(*t) for t in
            (("sms", "member_day"), ("sms", "bye"), ("email", "member_day"))] == [False, True, True]  # fmt: skip


PRINTS_UNSUBSCRIBE = """name: bye
entry: {when: "name is not null"}
transactional: true
steps:
  - send: {channel: sms, template: bye}
"""


def test_a_template_that_prints_its_unsubscribe_link_gets_it_in_either_process(
    sample: Path, tmp_path: Path
) -> None:
    from cdp_cli.messaging.links import short_code

    template = ("bye.txt", "【花漾】再见 {{ unsubscribe }}")
    in_one_and_two(sample, tmp_path, ("bye.yaml", PRINTS_UNSUBSCRIBE), template, "bye")
    files = outbound_files(tmp_path / "one")
    assert outbound_files(tmp_path / "two") == files
    lines = [line for content in files.values() for line in content.decode().splitlines()[1:]]
    assert len(lines) > 10
    for line in lines:
        message_id = line.split(",")[0]
        assert (
            f"再见 https://www.huayang.example.com/unsubscribe?m={short_code(message_id)}" in line
        )


def test_a_batch_crosses_the_pipe_as_it_was_made() -> None:
    """Frames: marshal for the batches' plain values (str, int, float, None, bytes, tuples,
    lists, dicts), a pickle for a value marshal refuses (a date in cdp.yaml's brand); a pipe
    that ends inside a frame is the worker gone (EOFError), never a half batch."""
    import datetime
    import io

    batch = (("one_id",), ("x",), {"name": "花漾"}, [("C1", (1, 2.5, None), {"k": "v"}, b"\xe8")])
    dated = {"founded": datetime.date(2020, 1, 1)}
    pipe = io.BytesIO(workers.frame(batch) + workers.frame(dated) + workers.frame(None))
    assert workers.read_frame(pipe) == batch
    assert workers.read_frame(pipe) == dated
    assert workers.read_frame(pipe) is None
    with pytest.raises(EOFError):
        workers.read_frame(pipe)
    with pytest.raises(EOFError):
        workers.read_frame(io.BytesIO(workers.frame(batch)[:-1]))


def test_a_message_context_shows_the_wechat_openid_and_push_device_address_finds() -> None:
    """Customers.context_addresses, one walk of a customer's identifiers, answers as
    Customers.address does for WeChat (the sending account's openid only) and push."""
    from cdp_cli.messaging.guards import Customers

    customers = Customers(
        addresses={
            "C1": [("device_id", "d1", None), ("phone", "+8613800000001", "mobile"),
                   ("wechat_openid", "wxother:o0", None), ("wechat_openid", "wxapp:o1", None),
                   ("device_id", "d2", None)],
            "C2": [("phone", "+8613800000002", "mobile")],
        }
    )  # fmt: skip
    for one_id in ("C1", "C2", "C3"):
        expected = (
            customers.address(one_id, "wechat", "wxapp"),
            customers.address(one_id, "push", None),
        )
        assert customers.context_addresses(one_id, "wxapp") == expected
    assert customers.context_addresses("C1", "wxapp") == ("wxapp:o1", "d1")
    assert customers.context_addresses("C1", None) == ("wxother:o0", "d1")


def test_an_outbox_row_puts_each_value_under_its_column() -> None:
    """send.message_row makes its MessageRow positionally (faster than by keyword): each
    value is where MessageRow names it, for a queued message and a skipped one."""
    from types import SimpleNamespace

    from cdp_cli.messaging import links
    from cdp_cli.messaging.channels import Outbound
    from cdp_cli.messaging.send import Delivery, MessageRow, message_row

    run: Any = SimpleNamespace(
        run_id=7, journey=SimpleNamespace(name="j", transactional=False), now_text="2026-11-15",
        settings=SimpleNamespace(cost=lambda channel: 0.04),
    )  # fmt: skip
    e: Any = SimpleNamespace(id=3, one_id="C1")
    step: Any = SimpleNamespace(key="steps[0]")
    body = {"text": "hi", "segments": 2, "encoding": "GSM-7"}
    delivery = Delivery("wxapp:o1", Outbound("sms", body), "WB-1", links.Link("ABC", "https://l"))
    queued = message_row(run, e, step, "j:3:steps[0]", "sms", delivery=delivery)
    assert type(queued) is MessageRow
    assert queued._asdict() == {
        "id": "j:3:steps[0]", "run_id": 7, "journey": "j", "enrolment_id": 3, "one_id": "C1",
        "step": "steps[0]", "channel": "sms", "status": "queued", "reason": None, "address": "o1",
        "payload": json.dumps(body), "coupon_code": "WB-1", "cost": 0.08, "transactional": 0,
        "created_at": "2026-11-15", "link_code": "ABC", "link_url": "https://l",
    }  # fmt: skip
    skipped = message_row(run, e, step, "j:3:steps[0]", None, reason="holdout")
    assert skipped._asdict() == {
        **queued._asdict(), "channel": None, "status": "skipped", "reason": "holdout",
        "address": None, "payload": None, "coupon_code": None, "cost": None, "link_code": None,
        "link_url": None,
    }  # fmt: skip
