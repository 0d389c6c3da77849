"""Sensors: governance approval (and, later, runner and network health)."""
