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
