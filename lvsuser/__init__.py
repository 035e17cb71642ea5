"""lvsuser: Linux Virtual Server in user space."""

__version__ = "0.1.0"
