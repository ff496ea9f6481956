"""Inputs -> rows {id, uri, shard} planned on the driver before any work starts."""
