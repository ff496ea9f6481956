"""Decoding of media bytes into RGB arrays."""
