"""``refact-lsp`` / ``python -m refact_lsp``: start the language server over stdio or TCP.

Every option can also come from an environment variable (the flag wins). Logs go to stderr or
``--log-file``, never to stdout, which carries the protocol in stdio mode. Document text is only
logged at debug level: pygls' own loggers (which log message bodies at info level) are kept at
warning unless the level is debug.
"""

from __future__ import annotations

import argparse
import gc
import ipaddress
import logging
import os
import sys
from collections.abc import Sequence
from typing import BinaryIO

from refact_lsp import __version__

log = logging.getLogger("refact_lsp")

ENV_PREFIX = "REFACT_LSP_"
LOG_LEVELS = ("debug", "info", "warning", "error")
PRIVATE_ENVIRONMENT = {"HF_HUB_DISABLE_TELEMETRY": "1"}


def _env(name: str) -> str | None:
    value = os.environ.get(ENV_PREFIX + name.upper())
    return value if value else None


def parse_tcp(value: str) -> tuple[str, int]:
    """``[HOST:]PORT`` -> (host, port); the host defaults to 127.0.0.1."""
    host, _, port_text = value.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    try:
        port = int(port_text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--tcp expects [HOST:]PORT, not {value!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is out of range 0-65535")
    return host, port


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="refact-lsp",
        description="Language server for AI code completion with Refact-1.6B-fim, running in-process.",
        epilog="Each option can also be set with an environment variable: REFACT_LSP_MODEL, "
        "REFACT_LSP_DEVICE, REFACT_LSP_DTYPE, REFACT_LSP_LOG_LEVEL, REFACT_LSP_LOG_FILE.",
    )
    parser.add_argument("--version", action="version", version=f"refact-lsp {__version__}")
    transport = parser.add_mutually_exclusive_group()
    transport.add_argument("--stdio", action="store_true", help="serve over stdin/stdout (the default)")
    transport.add_argument(
        "--tcp",
        metavar="[HOST:]PORT",
        type=parse_tcp,
        help="serve over TCP instead (host 127.0.0.1 unless given)",
    )
    parser.add_argument(
        "--model",
        default=_env("model"),
        help="hub id or local folder of the checkpoint (default: the server's default model)",
    )
    parser.add_argument("--device", default=_env("device"), help="auto, cpu, cuda, cuda:N, mps")
    parser.add_argument(
        "--dtype", default=_env("dtype"), help="auto, float32, bfloat16, float16, int8 (CPU only)"
    )
    parser.add_argument(
        "--log-level",
        default=(_env("log_level") or "info").lower(),
        type=str.lower,
        choices=LOG_LEVELS,
        help="log verbosity (document text is logged at debug only)",
    )
    parser.add_argument(
        "--log-file", default=_env("log_file"), help="append logs to this file instead of stderr"
    )
    return parser


class RedactPygls(logging.Filter):
    """pygls logs whole messages (document text included) in warnings and errors, e.g. ``Unknown message
    "%s"`` or a failed request's params in a traceback: above debug level only its message template is
    kept, without arguments or traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("pygls") and record.levelno > logging.DEBUG:
            from refact_lsp.server import is_answered_client_error  # loaded: pygls is logging

            if record.exc_info and is_answered_client_error(record.exc_info[1]):
                # the request was answered with the client's fault or "not yet": no server error
                record.levelno, record.levelname = logging.WARNING, "WARNING"
            template = str(record.msg).splitlines()[0] if record.msg else ""
            record.msg = f"{template} [details at debug level]"
            record.args = ()
            record.exc_info = record.exc_text = None
            record.stack_info = None
        return True


def setup_logging(level_name: str, log_file: str | None) -> None:
    level = getattr(logging, level_name.upper())
    handler: logging.Handler
    if log_file:
        handler = logging.FileHandler(log_file, encoding="utf-8")
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    if level > logging.DEBUG:
        handler.addFilter(RedactPygls())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # pygls logs whole messages (document text) at info level.
    logging.getLogger("pygls").setLevel(level if level <= logging.DEBUG else max(level, logging.WARNING))


def cli_settings(args: argparse.Namespace) -> dict[str, str]:
    """The settings given on the command line or in the environment, with their LSP names."""
    return {
        key: value
        for key, value in (("model", args.model), ("device", args.device), ("dtype", args.dtype))
        if value
    }


def keep_private() -> None:
    """No usage telemetry from the hub libraries (a user's own value wins). huggingface_hub reads the
    variable when it is imported, so this runs before anything imports it; the only traffic left is the
    model download, and none at all with a local model folder."""
    for name, value in PRIVATE_ENVIRONMENT.items():
        if not os.environ.get(name):  # unset or empty
            os.environ[name] = value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (and environment), checked: a bad value exits with a usage message (status 2)
    before anything starts, instead of a server that fails every request."""
    from refact_lsp.service.settings import Settings, SettingsError

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.log_level not in LOG_LEVELS:  # from the environment: argparse checks choices on flags only
        parser.error(f"{ENV_PREFIX}LOG_LEVEL={args.log_level!r}: expected one of {', '.join(LOG_LEVELS)}")
    try:
        Settings.from_lsp(cli_settings(args))
    except SettingsError as exc:
        flag = f"--{exc.key}" if exc.key in ("model", "device", "dtype") else exc.key
        parser.error(f"{flag} (or {ENV_PREFIX}{exc.key.upper()}): {exc}")
    if args.log_file:
        try:  # what setup_logging's FileHandler will do: appending creates the file
            open(args.log_file, "a", encoding="utf-8").close()  # noqa: SIM115
        except OSError as exc:
            parser.error(f"--log-file (or {ENV_PREFIX}LOG_FILE) {args.log_file!r}: {exc.strerror or exc}")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    keep_private()
    args = parse_args(argv)
    setup_logging(args.log_level, args.log_file)

    from refact_lsp.server import create_server

    server = create_server(cli_settings(args))
    if args.tcp is not None:
        host, port = args.tcp
        if not is_loopback(host):
            log.warning(
                "listening on %s: a non-loopback address lets other machines use this server and read "
                "the code sent to it",
                host,
            )
    else:
        log.info("refact-lsp %s serving on stdio", __version__)
    code = 0
    try:
        if args.tcp is not None:
            code = server.start_tcp(host, port)
        else:
            code = server.start_io(stdout=protocol_stdout())
    finally:
        _exit_cleanly(server, code)
    if code:
        sys.exit(code)


def protocol_stdout() -> BinaryIO:
    """In stdio mode file descriptor 1 carries the protocol, and anything else written to it (a library's
    ``print``, a native library's ``printf``) would corrupt it and end the session. The protocol gets a
    descriptor of its own, a copy of 1, and 1 itself (with ``sys.stdout``) then goes to stderr."""
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    sys.stdout.flush()
    try:
        os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    except (OSError, ValueError):  # no usable stderr: stray output goes nowhere
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), sys.stdout.fileno())
    return protocol


def _exit_cleanly(server, code: int = 0) -> None:
    """The client went away (or said exit): stop the engine thread before the interpreter shuts down.

    A daemon thread still inside torch while Python finalizes aborts the process (SIGABRT); a model load
    cannot be interrupted, so when the thread does not end in time the process leaves without finalizing.
    """
    if server.stop_engine():
        # the loaded model was frozen out of the cyclic GC (ModelRunner.load): without this, the
        # interpreter's last collection leaves it, and Triton's bindings report dozens of "leaked" objects
        gc.unfreeze()
        return
    log.warning("the engine thread did not stop in time; exiting without waiting for it")
    logging.shutdown()
    os._exit(code)


if __name__ == "__main__":
    main()
