"""kvspec: the executable spec and autograder for the KV-cache module."""
