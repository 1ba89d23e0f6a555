"""One module per step of a job, each a plain function: create, enhance, generate, score, select,
finalize, iterate."""
