"""The channels' names, and what a consent names: what reading cdp.yaml and opening the store
need of the channels (messaging.channels, the registry, adds each one's payload builder, file
format and templates; a test holds the two alike)."""

from __future__ import annotations

CHANNEL_NAMES = ("sms", "email", "wechat", "push")
# Channels whose identifiers belong to one sending account (WeChat's openids): cdp.yaml names
# it, `appid:` under the channel.
SCOPED_BY_APPID = frozenset({"wechat"})
# `cdp consent --channel`: a channel, or all of them at once.
CONSENT_CHANNELS = (*CHANNEL_NAMES, "all")
# What a consent is for: marketing messages, service messages (what a transactional journey
# sends: an order shipped, a reservation), or both; a consent that names no purpose is for all.
CONSENT_PURPOSES = ("marketing", "service", "all")
# Other ways a channel is written, casefolded: in a consents export's column (canonical.py maps
# them) and, by mistake, in a journey or cdp.yaml.
CHANNEL_WRITTEN_FORMS = {
    "短信": "sms", "e-mail": "email", "mail": "email", "邮件": "email", "邮箱": "email",
    "weixin": "wechat", "微信": "wechat", "推送": "push", "app": "push", "全部": "all",
}  # fmt: skip


def unknown_channel(name: object) -> str:
    """The message for a channel cdp does not know, with the one it likely means: its own name
    in another case, a written form of one (短信 is sms), else the closest name."""
    # Imported on a mistake's path only: not every command loads YAML.
    from cdp_cli.yamlfile import did_you_mean, suggestion

    text = str(name)
    meant = {n: n for n in CHANNEL_NAMES} | CHANNEL_WRITTEN_FORMS
    guess = meant.get(text.strip().casefold())
    hint = suggestion(guess) if guess in CHANNEL_NAMES else did_you_mean(text, CHANNEL_NAMES)
    return f"unknown channel {name!r}{hint}"
