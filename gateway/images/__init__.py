"""Image guards shared by the gateway and the Triton preprocessing model.

`decode` (Pillow + stdlib only: the Triton model imports it) checks and opens image bytes and
`data:` URLs; `fetch` downloads `http(s)` images without reaching private addresses; `load` ties
them together for the gateway. Nothing here imports the gateway's settings.
"""
