"""Helpers shared by the test modules: real servers on free loopback ports, fake backends."""
