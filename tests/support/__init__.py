"""Shared test helpers: a real daemon process, clients, XSD validation."""
