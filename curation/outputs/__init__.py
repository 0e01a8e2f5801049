"""What reads a finished run for people: `curate stats`, `curate report`, `curate export`."""
