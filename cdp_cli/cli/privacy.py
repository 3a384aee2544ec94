"""cdp consent and cdp forget: a customer's consents by hand, and erasing a person."""

from __future__ import annotations

from typing import Any

import click

from cdp_cli.cli import output as out
from cdp_cli.cli.options import (
    Project,
    json_option,
    lookup_options,
    one_lookup,
    pass_project,
    writes_store,
)
from cdp_cli.messaging.channel_names import CHANNEL_WRITTEN_FORMS
from cdp_cli.messaging.channels import CONSENT_CHANNELS


class ConsentChannel(click.Choice):
    """A consent's channel, also as a consents export writes it (短信, SMS, 微信), which cdp
    reads in such a file too."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        written = str(value).strip().casefold()
        return super().convert(CHANNEL_WRITTEN_FORMS.get(written, written), param, ctx)


@click.command(name="consent")
@lookup_options()
@click.option(
    "--channel",
    type=ConsentChannel(CONSENT_CHANNELS),
    help="The channel the consent is for; `all` covers every channel.",
)
@click.option("--opt-out", is_flag=True, help="Record an opt-out.")
@click.option("--opt-in", is_flag=True, help="Record an opt-in.")
@click.option("--reason", metavar="TEXT", help="Why, or where it was given (kept with it).")
@click.option("--unmask", is_flag=True, help="Show phones and emails in full.")
@json_option
@writes_store(only_with=("opt_out", "opt_in"))
@pass_project
def consent_command(
    project: Project,
    one_id: str | None,
    phone: str | None,
    email: str | None,
    channel: str | None,
    opt_out: bool,
    opt_in: bool,
    reason: str | None,
    unmask: bool,
    json_: bool,
) -> None:
    """Record an opt-in or opt-out by hand, or show a customer's consents.

    The consent is stored as a row of the consents source `manual`, at the present time, and
    journeys obey it from their next run: no `cdp resolve` needed. Without --opt-out or
    --opt-in, shows the customer's consents and the latest per channel.

    \b
    Examples:
      cdp consent --phone 13800138000 --channel sms --opt-out --reason "replied TD"
      cdp consent C000000042 --channel all --opt-in --reason "signed the form in store"
      cdp consent --email li.na@example.com
    """
    from cdp_cli.consent import consents_of, record_consent
    from cdp_cli.privacy import masked_consent

    lookup = one_lookup(one_id, phone, email)
    if opt_out and opt_in:
        raise click.UsageError("give one of --opt-out and --opt-in, not both")
    status = "opt_out" if opt_out else "opt_in" if opt_in else None
    if status and not channel:
        raise click.UsageError("--opt-out and --opt-in need --channel")
    if (channel or reason) and not status:
        raise click.UsageError("--channel and --reason go with --opt-out or --opt-in")
    config = project.config
    with project.store(create=False) as db:
        recorded = None
        if status:
            assert channel is not None
            recorded = record_consent(db, config, lookup, channel, status, reason).as_dict()
            recorded = recorded if unmask else masked_consent(recorded)
        report = consents_of(db, config, lookup)
    out.emit({**report, "recorded": recorded}, json_, _print_consents)


def _print_consents(report: dict[str, Any]) -> None:
    recorded = report["recorded"]
    if recorded:
        verb = "opted out of" if recorded["status"] == "opt_out" else "opted in to"
        noun = f"{recorded['identifier_type']} {recorded['identifier']}"
        if recorded["one_id"] is None:
            out.note(
                f"Recorded: {noun} {verb} {recorded['channel']} at {recorded['consented_at']}; "
                "no customer has it yet: it holds for whoever has it, now or later"
            )
        else:
            out.note(
                f"Recorded: {recorded['one_id']} {verb} {recorded['channel']} at "
                f"{recorded['consented_at']}, linked by {noun}"
            )

    def rows(items: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        return [
            (c["channel"], c["status"], c["consented_at"], c["source"], c["reason"]) for c in items
        ]

    columns = ["channel", "status", "at", "source", "reason"]
    who = report["one_id"] or "whoever gets this address (no customer has it yet)"
    if not report["history"]:
        click.echo(f"{who}: no consent recorded")
        return
    title = f"Consents of {who}: latest per channel"
    out.print_table(title, columns, rows(report["latest"]))
    out.print_table("All, oldest first", columns, rows(report["history"]))
    skipped = ", ".join(report["journeys_skip"]) or "none"
    click.echo(f"Channels journeys skip for {who}: {skipped}")


@click.command(name="forget")
@lookup_options()
@click.option(
    "--finish",
    is_flag=True,
    help="Only finish erasures a reader held up: VACUUM the store and empty its WAL.",
)
@click.option("--yes", is_flag=True, help="Do not ask; required when not run from a terminal.")
@json_option
@writes_store(pass_wait=True)
@pass_project
def forget_command(
    project: Project,
    one_id: str | None,
    phone: str | None,
    email: str | None,
    finish: bool,
    yes: bool,
    json_: bool,
    wait: float,
) -> None:
    """Erase a person everywhere, and keep them from coming back.

    Deletes their records, events, consents, identifiers, profile, tags and their history,
    features, journey state and unsent messages, and rejected lines that name them; rewrites
    outbound files not picked up yet without them, and lists the other files cdp wrote with
    them in (exports), which it cannot erase. Orders keep amount, time, store, channel and
    products, without any personal field or link. Tombstones (keyed hashes of their
    identifiers) make ingest refuse their rows from now on. Then the store is VACUUMed, so the
    erased bytes leave the file on disk. See docs/privacy.md.

    While another program reads the store, its old pages stay on disk: forget retries for
    --wait seconds (at least 2), then exits 1 naming the program; the erasure itself is
    committed, and `cdp forget --finish` finishes it once the reader has let go.

    \b
    Examples:
      cdp forget --phone 13800138000
      cdp forget C000000042 --yes --json
      cdp forget --finish --wait 60
    """
    import sys

    from cdp_cli.errors import CdpError
    from cdp_cli.forget import find_target, forget
    from cdp_cli.privacy import masked_forgotten
    from cdp_cli.purge import purge, purge_problem

    if finish:
        if one_id or phone or email:
            raise click.UsageError("--finish finishes every erasure: leave out the customer")
        with project.store(create=False) as db:
            purged = purge(db, wait=wait)
        out.emit(purged, json_, _print_purge)
    else:
        lookup = one_lookup(one_id, phone, email)
        if not yes and not sys.stdin.isatty():
            raise click.UsageError(
                "not a terminal, so nothing can be confirmed: add --yes to forget"
            )
        config = project.config
        with project.store(create=False) as db:
            target = find_target(db, config, lookup)
            if target.one_id and not yes:
                click.confirm(
                    f"Forget {_describe_target(target)} for good? This cannot be undone",
                    abort=True,
                    err=True,
                )
            result = forget(db, config, target, wait)
        out.emit(masked_forgotten(result.as_dict()), json_, _print_forgotten)
        purged = result.purge
    problem = purge_problem(purged)
    if problem:
        raise CdpError(problem)


def _describe_target(target: Any) -> str:
    from cdp_cli.privacy import mask

    shown = ", ".join(f"{t} {mask(t, v)}" for t, v in target.identifiers)
    name = f"{target.name}, " if target.name else ""
    return f"{target.one_id} ({name}{target.records} records; {shown})"


def _print_forgotten(result: dict[str, Any]) -> None:
    if result["already_forgotten"]:
        click.echo("Forgotten already: nobody in the store has that identifier or one_id.")
    else:
        records = result["records"]
        rows = [
            ("identifiers erased, each now a tombstone",
             ", ".join(f"{i['type']} {i['value']}" for i in result["identifiers"])),
            ("customer records, events, consents deleted",
             f"{records['customers']}, {records['events']}, {records['consents']}"),
            ("orders and coupons kept without a person",
             f"{records['orders']}, {records['coupons']}"),
            ("other customers whose records named them", ", ".join(result["other_customers"])),
            ("journey enrolments deleted", result["journey_enrolments"]),
            ("messages deleted (unsent) / kept without a person (written)",
             f"{result['messages_deleted']} / {result['messages_kept_without_person']}"),
            ("rejected lines deleted", result["rejects"]),
            ("outbound files rewritten without them", len(result["outbound_files"])),
        ]  # fmt: skip
        out.print_table(f"Forgotten: {result['one_id']}", ["", "value"], rows)
        for path in result["outbound_files"]:
            out.note(f"rewrote {path}")
        _print_exports(result["exports"])
    if result["purged"]:
        _print_purge(result)


def _print_exports(exports: list[dict[str, Any]]) -> None:
    """The files cdp wrote with them in: those it could not rewrite are the user's to erase."""
    if not exports:
        return
    rows = [
        (e["written_at"], e["path"], out.fmt_int(e["rows"]),
         " ".join(filter(None, (e["kind"], e["audience"]))),
         "rewritten without them" if e["rewritten"] else "NOT erased")
        for e in exports
    ]  # fmt: skip
    columns = ["written", "file", "rows", "what", "them in it"]
    out.print_table("Files cdp wrote with them in", columns, rows)
    left = sum(not e["rewritten"] for e in exports)
    if left:
        out.note(
            f"{left} of these files left cdp's hands: cdp cannot erase files it no longer "
            "controls. Delete them, or ask whoever took them to erase this person."
        )


def _print_purge(purged: Any) -> None:
    shown = purged if isinstance(purged, dict) else purged.as_dict()
    if shown["purged"]:
        out.note("Store VACUUMed and its WAL truncated: the erased bytes are gone from disk.")
