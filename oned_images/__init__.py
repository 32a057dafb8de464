"""oned-images: an OpenNebula 7.0-compatible image service."""

__version__ = "0.1.0"

#: The OpenNebula release whose API we reproduce; one.system.version answers this.
ONE_VERSION = "7.0.2"
