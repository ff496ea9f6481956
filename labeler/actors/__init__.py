"""Callable classes that Ray Data's map_batches (and Serve deployments) build once per worker."""
