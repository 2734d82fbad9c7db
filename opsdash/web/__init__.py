"""The console in a browser: ``opsdash web`` (textual-serve behind a sign-in).

The engine never imports this package; it imports aiohttp and textual-serve.
"""
