"""The live view in the browser (``databus web``): an aiohttp server that follows sessions
with the SDK and serves one page (``static/``) fed through one websocket per page.

Modules: ``_decimate`` (what a screen can show: min/max per pixel column, frames shrunk to
8 bits, pure), ``_model`` (what the server knows of a scan, built from walk events),
``_follower`` (one thread per session walking it into the models), ``_wire`` (the binary
messages to the page), ``_page`` (one page's websocket: what it asked for, what it has),
``server`` (the application and the command).
"""
