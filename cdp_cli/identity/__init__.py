"""Who is who: identifiers normalized, records linked into customers, golden profiles, erasure."""
