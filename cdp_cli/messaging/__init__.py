"""Reaching customers: journeys, their engine, channels, templates, guards and the outbox."""
