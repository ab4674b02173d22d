"""Exports of edits to formats other tools serve."""
