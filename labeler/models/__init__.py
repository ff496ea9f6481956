"""One module per model family; adapters follow the contract in `labeler.models.base`."""
