"""cdp resolve and cdp profile: records linked into customers, and one customer's view."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from cdp_cli.cli import output as out
from cdp_cli.cli.options import (
    Project,
    export_option,
    json_option,
    lookup_options,
    one_lookup,
    pass_project,
    silent_option,
    writes_store,
)

if TYPE_CHECKING:
    from cdp_cli.identity.resolve import ResolveResult
    from cdp_cli.profile360 import Profile360


@click.command(name="resolve")
@click.option("--full", is_flag=True, help="Resolve everything again, not only what is new.")
@export_option("Then write the ID-mapping table (source, key, one_id) to a .csv or .jsonl file.")
@click.option(
    "--explain", "explain_id", metavar="ONE_ID", help="Show why a customer's records are together."
)
@click.option(
    "--unmask", is_flag=True, help="With --explain or --review: show personal values in full."
)
@click.option(
    "--review", is_flag=True, help="List the probable pairs waiting for a person's decision."
)
@click.option("--accept", metavar="PAIR", help="Join a pair of the review queue from now on.")
@click.option(
    "--reject", metavar="PAIR", help="Never join a pair of records (a permanent cannot-link)."
)
@click.option(
    "--worker-from",
    type=click.IntRange(min=0),
    default=None,
    hidden=True,  # for the tests and benchmarks: keys.WORKER_FROM_ROWS is the default
    help="On a full run, read part of the keys with a second process when the tables after the "
    "members hold this many rows.",
)
@silent_option
@json_option
@writes_store(unless=("explain_id", "review"))
@pass_project
def resolve_command(
    project: Project,
    full: bool,
    export_path: Path | None,
    explain_id: str | None,
    unmask: bool,
    review: bool,
    accept: str | None,
    reject: str | None,
    worker_from: int | None,
    silent: bool,
    json_: bool,
) -> None:
    """Link records that share an identifier into one customer with a stable one_id.

    Phones, emails, member numbers, WeChat ids and device ids are normalized, then joined
    strongest first under the guards in cdp.yaml's identity: section. After the first run only
    what new batches reach is resolved again; with nothing new, nothing changes.

    \b
    Examples:
      cdp resolve
      cdp resolve --export id_mapping.csv      the table business systems take back
      cdp resolve --explain C000000042         why these records are one customer
      cdp resolve --review                     probable pairs waiting for a person
      cdp resolve --reject 7                   these two are not one customer, ever
    """
    # Each way imports what it uses, and no more: a plain `cdp resolve` is what cron runs.
    config = project.config
    with project.store() as db:
        if explain_id:
            from cdp_cli.identity.explain import explain
            from cdp_cli.privacy import masked_explain

            report = explain(db, explain_id)
            out.emit(report if unmask else masked_explain(report), json_, _print_explain)
            return
        if review:
            from cdp_cli.identity.review import review_queue
            from cdp_cli.privacy import masked_review

            pairs = review_queue(db)
            out.emit(pairs if unmask else masked_review(pairs), json_, print_review)
            return
        if accept or reject:
            from cdp_cli.identity.review import decide

            decided = decide(db, accept or reject or "", "accepted" if accept else "rejected")
            out.emit(decided, json_, lambda d: out.note(_decided_line(d), silent))
            return
        from cdp_cli.identity.keys import WORKER_FROM_ROWS
        from cdp_cli.identity.resolve import resolve

        rows = WORKER_FROM_ROWS if worker_from is None else worker_from
        result = resolve(db, config, full=full, worker_from=rows)
        exported = None
        if export_path:
            from cdp_cli.identity.explain import export_mapping

            exported = export_mapping(db, export_path)
    resolved = {**result.as_dict(), "exported": exported}
    out.emit(resolved, json_, lambda _: _print_resolved(result, export_path, exported, silent))


def _print_resolved(
    result: ResolveResult, export_path: Path | None, exported: int | None, silent: bool
) -> None:
    print_resolve(result)
    for note in result.notes:
        out.note(note, silent)
    if export_path:
        out.note(f"Wrote {exported:,} rows of the ID mapping to {export_path}", silent)


def _decided_line(decided: dict[str, Any]) -> str:
    then = "joined" if decided["decision"] == "accepted" else "kept apart"
    return (
        f"Pair {decided['pair']} {decided['decision']}: the next `cdp resolve` and every later "
        f"run keep its records {then}"
    )


def print_review(pairs: list[dict[str, Any]]) -> None:
    """Each pair waiting: its number, probability, the agreeing fields, both records."""
    rows = []
    for p in pairs:
        fields = p["fields"]
        rows.append(
            (
                p["pair"],
                f"{p['probability']:.3f}",
                f"{p['weight']:.1f}",
                ", ".join(f"{f} ({fields[f]['weight']:+.1f})" for f in p["agreeing"]) or "none",
                _shown(p["shown_a"]),
                _shown(p["shown_b"]),
            )
        )
    out.print_table(
        f"Pairs to review: {len(pairs)} (cdp resolve --accept N | --reject N)",
        ["pair", "probability", "weight", "agreeing fields (weight)", "record a", "record b"],
        rows,
    )


def _shown(values: dict[str, Any]) -> str:
    return " / ".join(str(v) for v in values.values() if v) or "-"


def print_resolve(result: ResolveResult) -> None:
    rows = [
        ("mode", result.mode),
        ("identity keys, new", out.fmt_int(result.keys_new)),
        ("identity keys, resolved", out.fmt_int(result.keys_resolved)),
        ("customers (one_ids)", out.fmt_int(result.profiles)),
        ("one_ids created", out.fmt_int(result.created)),
        ("one_ids merged away", out.fmt_int(result.merged)),
        ("one_ids split off", out.fmt_int(result.split)),
        ("one_ids removed", out.fmt_int(result.removed)),
        ("links refused by a guard", out.fmt_int(result.refused_links)),
        ("values that identify no one", out.fmt_int(result.unusable_values)),
    ]
    if result.matching is not None:
        rows += [
            ("probable links made", out.fmt_int(result.matching["probable_links"])),
            ("probable links refused", out.fmt_int(result.matching["probable_refused"])),
            ("pairs waiting for review", out.fmt_int(result.matching["to_review"])),
        ]
    rows.append(("seconds", f"{result.seconds:.2f}"))
    out.print_table("Resolved", ["", "count"], rows, numeric=1)
    print_set_aside(result.set_aside)


def print_set_aside(rows: list[dict[str, Any]]) -> None:
    """Values that identify no one, per type and reason: a filter eating real data shows here."""
    if rows:
        out.print_table(
            "Identity values set aside (they identify no one)",
            ["identifier", "set aside because", "values"],
            [(r["type"], r["reason"], out.fmt_int(r["values"])) for r in rows],
            numeric=1,
        )


def _print_explain(report: dict[str, Any]) -> None:
    if report["merged_from"]:
        out.note(f"{report['asked_for']} was merged into {report['one_id']}")
    out.print_table(
        f"Identifiers of {report['one_id']}",
        ["type", "value", "detail", "keys"],
        [(i["type"], i["value"], i["detail"], i["keys"]) for i in report["identifiers"]],
        numeric=1,
    )
    out.print_table(
        "Records",
        ["kind", "source", "key"],
        [(r["kind"], r["source"], r["key"]) for r in report["records"]],
    )
    if report["refused_links"]:
        out.print_table(
            "Links refused",
            ["type", "value", "reason", "belongs to"],
            [
                (r["type"], r["value"], r["reason"], r["belongs_to"])
                for r in report["refused_links"]
            ],
        )
    if report["unusable_values"]:
        out.print_table(
            "Values that identify no one",
            ["type", "as written", "reason"],
            [(u["type"], u["raw"], u["reason"]) for u in report["unusable_values"]],
        )
    if report.get("probable_links"):
        print_probable_links(report["probable_links"])


def print_probable_links(links: list[dict[str, Any]]) -> None:
    """Links made by matching fields, not by a shared identifier: probable, not certain."""
    out.print_table(
        "Probable links (fields matched, no shared identifier)",
        ["record a", "record b", "by", "status", "probability", "weight", "each field's weight"],
        [
            (
                _record(link["record_a"]),
                _record(link["record_b"]),
                link["decided_by"],
                link["status"] + (f": {link['reason']}" if link["reason"] else ""),
                f"{link['probability']:.3f}",
                f"{link['weight']:.1f}",
                ", ".join(
                    f"{f} {v['level']} {v['weight']:+.1f}" for f, v in link["fields"].items()
                ),
            )
            for link in links
        ],
    )


def _record(record: dict[str, Any] | None) -> str:
    return f"{record['source']}:{record['key']}" if record else "-"


@click.command(name="profile")
@lookup_options(device=True)
@click.option("--unmask", is_flag=True, help="Show phones and emails in full.")
@json_option
@pass_project
def profile_command(
    project: Project,
    one_id: str | None,
    phone: str | None,
    email: str | None,
    device: str | None,
    unmask: bool,
    json_: bool,
) -> None:
    """Show one customer's 360° view: golden record, identifiers, orders, events, history.

    A one_id that was merged into another still finds the customer it became.
    Also their consent per channel, the journeys they entered and the last 20 messages
    sent to them.

    \b
    Examples:
      cdp profile C000000042
      cdp profile --phone "+86 138 0013 8000"
      cdp profile --email li.na@example.com --json
    """
    from cdp_cli.profile360 import profile_360

    lookup = one_lookup(one_id, phone, email, device, by_device=True)
    with project.store(create=False) as db:
        view = profile_360(db, project.config, lookup)
    out.emit(view if unmask else view.masked(), json_, print_profile)


def print_profile(view: Profile360) -> None:
    profile = view.profile
    if view.merged_from:
        out.note(f"{' -> '.join(view.merged_from)} was merged into {view.one_id}")
    lineage = profile["lineage"] or {}
    golden = [
        (field, profile[field], lineage.get(field) or "")
        for field in ("name", "gender", "birthday", "city")
    ]
    golden += [
        ("phones", ", ".join(profile["phones"]), ""),
        ("emails", ", ".join(profile["emails"]), ""),
        ("first seen", profile["first_seen"], ""),
        ("last seen", profile["last_seen"], ""),
        ("sources", ", ".join(profile["sources"] or []), ""),
        ("records", profile["records"], ""),
        ("known", "yes" if profile["known"] else "no (anonymous: a device only)", ""),
    ]
    out.print_table(f"Customer {view.one_id}", ["", "value", "from"], golden)
    out.print_table(
        "Identifiers",
        ["type", "value", "detail"],
        [(i["type"], i["value"], i["detail"]) for i in view.identifiers],
    )
    orders = view.orders
    out.print_table(
        f"Orders: {orders['orders']}, total {orders['total_spent']:,.2f}",
        ["at", "source", "order", "channel", "store", "amount"],
        [
            (
                o["ordered_at"],
                o["source"],
                o["order_id"],
                o["channel"],
                o["store"],
                f"{o['amount']:,.2f}",
            )
            for o in orders["latest"]
        ],
        numeric=1,
    )
    if view.events:
        out.print_table(
            "Recent events",
            ["at", "event", "platform"],
            [(e["occurred_at"], e["event"], e["platform"]) for e in view.events],
        )
    if view.tags:
        out.print_table(
            "Tags",
            ["tag", "value", "since"],
            [(t["tag"], t["value"], t["since"]) for t in view.tags],
        )
    if view.segments:
        click.echo(f"Segments: {', '.join(view.segments)}")
    if view.probable_links:
        out.print_table(
            "Probable links: records joined by matching fields, not by an identifier",
            ["record a", "record b", "by", "probability", "fields that agreed"],
            [
                (
                    _record(p["record_a"]),
                    _record(p["record_b"]),
                    p["decided_by"],
                    f"{p['probability']:.3f}",
                    ", ".join(p["agreeing"]),
                )
                for p in view.probable_links
            ],
        )
    if view.history:
        out.print_table(
            "History",
            ["one_id", "event", "other", "at"],
            [(h["one_id"], h["event"], h["other_one_id"], h["at"]) for h in view.history],
        )
    print_engagement(view)


def print_engagement(view: Profile360) -> None:
    """Consents, journeys and messages: what marketing has done with them, and may."""
    out.print_table(
        "Consents (the latest per channel)",
        ["channel", "status", "since", "source"],
        [(c["channel"], c["status"], c["consented_at"], c["source"]) for c in view.consents],
    )
    out.print_table(
        "Journeys",
        ["journey", "enrolled at", "status", "current step", "group"],
        [
            (j["journey"], j["entered_at"], j["status"], j["step"], j["group"])
            for j in view.journeys
        ],
    )
    out.print_table(
        "Messages (the most recent, newest first)",
        ["at", "journey", "step", "channel", "status", "address"],
        [
            (m["at"], m["journey"], m["step"], m["channel"], m["status"], m["address"])
            for m in view.messages
        ],
    )
