"""The worker process: bootstrap (logging, the scorer, task context) and library fixes."""
