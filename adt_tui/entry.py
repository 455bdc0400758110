"""The `adt` console script. A Ctrl+C while adt's modules still load ends it with one line and
code 130, not an import traceback: the handler goes in before anything else of adt is imported.
(Only the interpreter's own start-up, before this file runs, is beyond reach.)"""

import signal
import sys


def _interrupted_while_loading(signum, frame):
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    print("adt: interrupted", file=sys.stderr, flush=True)
    raise SystemExit(130)


signal.signal(signal.SIGINT, _interrupted_while_loading)


def main() -> int:
    from adt_tui.cli import main as run_command

    signal.signal(signal.SIGINT, signal.default_int_handler)  # from here the command's own handling
    return run_command()
