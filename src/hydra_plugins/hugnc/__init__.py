"""hugnc's Hydra plugins."""
