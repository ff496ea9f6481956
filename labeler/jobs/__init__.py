"""Pipeline builders: a validated JobSpec -> one Ray Data pipeline."""
