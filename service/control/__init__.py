"""Stop and double texting (contract §8): the cancel registry and the on_busy policies."""
