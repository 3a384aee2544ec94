"""The rules a journey writes: who enters and exits (customer rules), and what a branch tests,
which may also be the enrolment itself (converted, received, opened, clicked)."""

from __future__ import annotations

from datetime import date

from cdp_cli.config import Config
from cdp_cli.rules.book import load_rulebook
from cdp_cli.rules.compiler import CompiledRule, RuleSchema, compile_rule
from cdp_cli.rules.vocabulary import RuleContext

OPEN_EVENTS = ("open", "email_open", "message_open")
CLICK_EVENTS = ("click", "link_click", "qr_scan")


class JourneyRules:
    """Compiles a journey's rules; branches may also test the enrolment itself."""

    def __init__(
        self,
        config: Config,
        as_of: date,
        known_tags: set[str],
        predicted: frozenset[str] = frozenset(),
    ) -> None:
        book = load_rulebook(config.tag_rules_folder)
        self.context = RuleContext(book, as_of, known_tags, predicted=predicted)
        # Entry and exit rules select from the whole base, as a segment's do: tags as sets
        # from the tag index (RuleContext.whole_base) rather than looked up per customer.
        self.base = RuleContext(book, as_of, known_tags, whole_base=True, predicted=predicted)

    def customer(self, text: str) -> CompiledRule:
        """An entry or exit rule: which customers of the whole base it selects."""
        return self.base.compile(text, condition=True)

    def branch(self, text: str) -> CompiledRule:
        base = self.context.schema()
        fields = dict(base.fields)
        fields["converted"] = "(je.converted_at IS NOT NULL)"
        fields["received"] = (  # a message of this enrolment went out (was not skipped)
            "EXISTS (SELECT 1 FROM messages m WHERE m.one_id = je.one_id "
            "AND m.enrolment_id = je.id AND m.status != 'skipped')"
        )
        for name, events in (("opened", OPEN_EVENTS), ("clicked", CLICK_EVENTS)):
            listed = ", ".join(f"'{e}'" for e in events)  # constants of ours, not user text
            fields[name] = (
                "EXISTS (SELECT 1 FROM events e JOIN identity_keys k ON k.key = e.identity_key "
                f"WHERE k.one_id = je.one_id AND e.event IN ({listed}) "
                "AND e.occurred_at >= je.entered_at)"
            )
        return compile_rule(text, RuleSchema(fields, base.functions))
