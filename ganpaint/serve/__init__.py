"""`ganpaint serve`: a local web page to try trained inpainting models on photos with a brush.

`fills` runs a request (no web code), `app` is the Starlette application, `command` binds the
socket and runs uvicorn; `static/` holds the page (HTML, JS, CSS), shipped as package data.
"""
