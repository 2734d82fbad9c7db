"""opsdash: the sync engine, read API and operator console behind the MaidCentral portal."""

__version__ = "0.1.0"
