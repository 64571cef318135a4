"""`ganpaint serve --run RUN [--run RUN2 ...]`: open the models, bind the socket, run uvicorn.

The socket is bound here, before uvicorn starts, so a port in use is one line, and --port 0 gets
a free port whose address is printed (tests start the server that way). Which Host headers are
answered follows from --host and --allowed-hosts (ganpaint/serve/limits.py).
"""

from __future__ import annotations

import socket

from ganpaint.errors import UserError
from ganpaint.infer.images import DEFAULT_MAX_MEGAPIXELS
from ganpaint.infer.runs import resolve_device
from ganpaint.serve.limits import DEFAULT_QUEUE, EVERY_INTERFACE, MAX_QUEUE, allowed_hosts

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


def _check_queue(queue: int) -> None:
    if not 0 <= queue <= MAX_QUEUE:
        raise UserError(f"--queue {queue}: need 0 to {MAX_QUEUE} fills waiting")


def serve_command(
    runs: list[str],
    host: str,
    port: int,
    device: str,
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
    allowed: str | None = None,
    queue: int = DEFAULT_QUEUE,
) -> int:
    """Serve the page until interrupted (Ctrl-C or SIGTERM end it cleanly). `allowed`: the
    --allowed-hosts list; `queue`: how many fills may wait behind the running one."""
    try:
        import uvicorn

        from ganpaint.serve.app import create_app
    except ImportError as error:
        raise UserError(
            f"ganpaint serve needs its optional dependencies ({error.name} is missing): "
            "pip install 'ganpaint[serve]'"
        ) from None
    from ganpaint.serve.fills import load_models

    _check_queue(queue)
    hosts = allowed_hosts(host, allowed)
    models = load_models(runs, resolve_device(device))
    listener = _bind(host, port)
    port = listener.getsockname()[1]
    shown_host = socket.gethostname() if host in EVERY_INTERFACE else host
    if ":" in shown_host:
        shown_host = f"[{shown_host}]"
    names = ", ".join(f"{m.name} ({m.exported.config.model.family})" for m in models)
    print(f"ganpaint serve: {names} at http://{shown_host}:{port}/", flush=True)
    print(_how_to_reach(host, port), flush=True)
    answered = "any host name" if hosts is None else ", ".join(sorted(hosts))
    print(f"answers requests for {answered}; at most {queue} fills wait", flush=True)
    app = create_app(models, max_megapixels, hosts, queue)
    # h11, not httptools even where installed: the early answers (413, 503) are tested with it
    config = uvicorn.Config(
        app, log_level="warning", access_log=False, timeout_graceful_shutdown=5, http="h11"
    )
    uvicorn.Server(config).run(sockets=[listener])
    return 0
