"""`ganpaint serve --run RUN [--run RUN2 ...]`: open the models, bind the socket, run uvicorn.

The socket is bound here, before uvicorn starts, so a port in use is one line, and --port 0 gets
a free port whose address is printed (tests start the server that way).
"""

from __future__ import annotations

import socket

from ganpaint.errors import UserError
from ganpaint.eval.runs import resolve_device
from ganpaint.images import DEFAULT_MAX_MEGAPIXELS

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _bind(host: str, port: int) -> socket.socket:
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host, port), family=family)
    except (OSError, OverflowError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        raise UserError(
            f"cannot listen on {host}:{port} ({reason}); pass another --port (0 picks a free one)"
        ) from None


def _how_to_reach(host: str, port: int) -> str:
    if host in LOOPBACK:
        return (
            "only this machine can open it; from elsewhere use an SSH tunnel "
            f"(ssh -L {port}:localhost:{port} USER@{socket.gethostname()}) or --host 0.0.0.0 "
            "(anyone who can reach this machine can use it: there is no login)"
        )
    return "anyone who can reach this machine can use it: there is no login"


def serve_command(
    runs: list[str],
    host: str,
    port: int,
    device: str,
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
) -> int:
    """Serve the page until interrupted (Ctrl-C or SIGTERM end it cleanly)."""
    try:
        import uvicorn

        from ganpaint.serve.app import create_app
    except ImportError as error:
        raise UserError(
            f"ganpaint serve needs its optional dependencies ({error.name} is missing): "
            "pip install 'ganpaint[serve]'"
        ) from None
    from ganpaint.serve.fills import load_models

    models = load_models(runs, resolve_device(device))
    listener = _bind(host, port)
    port = listener.getsockname()[1]
    shown_host = socket.gethostname() if host in ("0.0.0.0", "::") else host
    if ":" in shown_host:
        shown_host = f"[{shown_host}]"
    names = ", ".join(f"{m.name} ({m.exported.config.model.family})" for m in models)
    print(f"ganpaint serve: {names} at http://{shown_host}:{port}/", flush=True)
    print(_how_to_reach(host, port), flush=True)
    app = create_app(models, max_megapixels)
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=5)
    uvicorn.Server(config).run(sockets=[listener])
    return 0
