"""Recovery: automatic retries with capped budgets (retry, budgets, classify), dead-letter queues and replay."""
