"""cdp.yaml mistakes end in one line naming the file and line, with exit code 2."""

from __future__ import annotations

import pytest

GOOD_SOURCE = """
sources:
  crm:
    kind: customers
    key: member_no
    fields: {member_no: id, phone: mobile}
"""


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        (
            "store: x.db\nsourcs: {}\n",
            "cdp.yaml:2: top level: unknown key 'sourcs' (did you mean 'sources'?)",
        ),
        (
            "sources:\n  crm:\n    kind: customer\n    fields: {}\n",
            "cdp.yaml:3: sources.crm.kind: expected one of customers, orders, events, consents, "
            "coupons, got 'customer' (did you mean 'customers'?)",
        ),
        (
            "sources:\n  crm:\n    kind: customers\n    fields:\n      phnoe: mobile\n",
            "cdp.yaml:5: sources.crm.fields: 'phnoe' is not a field of kind customers "
            "(did you mean 'phone'?)",
        ),
        (
            "sources:\n  o:\n    kind: orders\n    fields: {amount: a}\n",
            "cdp.yaml:2: sources.o.fields: kind orders needs a mapping for ordered_at",
        ),
        ("sources:\n  crm: [\n", "cdp.yaml:3: invalid YAML, column 1:"),
        ("region: CN\nregion: US\n", "cdp.yaml:2: duplicate key 'region'"),
        (
            "sources:\n  crm:\n    kind: customers\n    fields:\n      member_no: no\n",
            "cdp.yaml:5: sources.crm.fields.member_no: YAML reads this as false, not a column "
            "name; put it in quotes",
        ),
        ("timezone: Mars/Base\n", "cdp.yaml:1: timezone: unknown timezone 'Mars/Base'"),
        (
            "timezone: Beijing\n",
            "cdp.yaml:1: timezone: unknown timezone 'Beijing' (did you mean 'Asia/Shanghai'?)",
        ),
        (
            "timezone: 北京时间\n",
            "cdp.yaml:1: timezone: unknown timezone '北京时间' (did you mean 'Asia/Shanghai'?)",
        ),
        (
            "timezone: Hong Kong\n",
            "cdp.yaml:1: timezone: unknown timezone 'Hong Kong' (did you mean 'Asia/Hong_Kong'?)",
        ),
        (
            "timezone: Asia/Shangai\n",
            "cdp.yaml:1: timezone: unknown timezone 'Asia/Shangai' (did you mean 'Asia/Shanghai'?)",
        ),
        (
            "timezone: UTC+8\n",
            "cdp.yaml:1: timezone: unknown timezone 'UTC+8' (did you mean 'Asia/Shanghai'? A timezone "
            "names a place; 'Etc/GMT-8' is a fixed UTC+8)",
        ),
        (
            'timezone: "GMT-05:00"\n',
            "cdp.yaml:1: timezone: unknown timezone 'GMT-05:00' (a timezone names a place, as "
            "'Asia/Shanghai' does; 'Etc/GMT+5' is a fixed UTC-5)",
        ),
        ("region: XX\n", "cdp.yaml:1: region: unknown region 'XX'"),
        ("region: China\n", "cdp.yaml:1: region: unknown region 'CHINA' (did you mean 'CN'?)"),
        ("region: 中国\n", "cdp.yaml:1: region: unknown region '中国' (did you mean 'CN'?)"),
        (
            "region: Hong Kong\n",
            "cdp.yaml:1: region: unknown region 'HONG KONG' (did you mean 'HK'?)",
        ),
        ("region: USA\n", "cdp.yaml:1: region: unknown region 'USA' (did you mean 'US'?)"),
        ("- a\n- b\n", "cdp.yaml:1: expected a mapping of settings at the top level"),
        (
            "sources:\n  e:\n    kind: events\n    fields: {event: e, occurred_at: t}\n    items: {}\n",
            "cdp.yaml:5: sources.e.items: only orders have items",
        ),
        (
            GOOD_SOURCE + "identity:\n  source_priority: [crn]\n",
            "cdp.yaml:7: identity.source_priority: no source named 'crn' (did you mean 'crm'?)",
        ),
        (
            GOOD_SOURCE + "identity:\n  phone: {sources: [crn]}\n",
            "cdp.yaml:7: identity.phone.sources: no source named 'crn' (did you mean 'crm'?)",
        ),
    ],
)
def test_config_errors_name_file_and_line(run, write, yaml_text, message):
    write("cdp.yaml", yaml_text)
    result = run("ingest")
    assert result.exit_code == 2
    assert result.stderr.startswith(f"Error: {message}")
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output


def test_missing_config_says_how_to_make_one(run):
    result = run("ingest")
    assert result.exit_code == 2
    assert result.stderr == "Error: cdp.yaml: not found; run `cdp init` to create a project here\n"


def test_config_and_db_options_and_env(run, write, tmp_path, monkeypatch):
    write("elsewhere/project.yaml", GOOD_SOURCE)
    write("data.csv", "id,mobile\nM1,13800138000\n")
    result = run(
        "--config", "elsewhere/project.yaml", "--db", "other.db", "ingest", "data.csv", "-s", "crm"
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "other.db").exists()
    monkeypatch.setenv("CDP_CONFIG", str(tmp_path / "elsewhere/project.yaml"))
    monkeypatch.setenv("CDP_DB", str(tmp_path / "env.db"))
    assert run("ingest", "data.csv", "-s", "crm").exit_code == 0
    assert (tmp_path / "env.db").exists()


def test_store_path_is_relative_to_config(run, write, tmp_path):
    write("proj/cdp.yaml", "store: data/store.db\n" + GOOD_SOURCE)
    (tmp_path / "proj/data").mkdir()
    write("in.csv", "id,mobile\nM1,1\n")
    assert run("--config", "proj/cdp.yaml", "ingest", "in.csv", "-s", "crm").exit_code == 0
    assert (tmp_path / "proj/data/store.db").exists()


def test_unknown_source_suggests(run, write):
    write("cdp.yaml", GOOD_SOURCE)
    write("in.csv", "id,mobile\n")
    result = run("ingest", "in.csv", "--source", "crn")
    assert result.exit_code == 2
    assert (
        result.stderr
        == "Error: cdp.yaml: no source named 'crn' (did you mean 'crm'?) (sources: crm)\n"
    )
