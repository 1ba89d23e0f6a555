"""The job model: requests, frame plan, records, and the job's state in Redis."""
