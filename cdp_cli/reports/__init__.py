"""What the marketing did: journey effect, funnels, lifecycle, the overview, and HTML."""
