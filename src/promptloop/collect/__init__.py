"""Stage collect: production logs -> validated, PII-redacted, DVC-versioned snapshot."""
