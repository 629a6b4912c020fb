"""Runtime building blocks with no knowledge of policy: one backoff, one runner."""
