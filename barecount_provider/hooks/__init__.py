"""BareCount hooks: one module per external system BareCount itself talks to (``dlq``: dead-letter queues)."""
