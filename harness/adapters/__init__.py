"""Adapters: one module per queue implementation under test."""
