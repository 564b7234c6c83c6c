"""Backends: each is a loader (builds an executable session) plus a runner (runs it)."""
