"""The rule language: one expression syntax for tags, segments and journey conditions."""
