"""Robustness: fuzzing, document-sync properties and load against the real server process."""
