"""``edge-smw serve``: a camera, the runtime, a live web view and auto-capture of best shots.

Torch-free (it runs on the camera). Threads: capture (newest frame only), scoring (per-face
smoothing, auto-capture trigger), rendering (one JPEG per scored frame for every viewer),
capture writer (atomic files); aiohttp serves the web side. Import the pieces from their
modules: ``sources``, ``scoring``, ``capture``, ``metrics``, ``service``, ``app``.
"""
