"""fedlab: the Flower app and its glue."""
