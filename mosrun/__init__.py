"""mosrun: what a mosix user touches — the command-line tools and the task runtime."""
