"""BareCount runner operators: one module per runner class, sharing :mod:`barecount_provider.operators.base`."""
