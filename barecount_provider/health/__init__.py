"""Health: checks of the dependencies a tenant's network profile relies on, one result shape for all (docs/health.md)."""
