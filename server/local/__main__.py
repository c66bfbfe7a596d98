"""Run the Lambda locally, no Docker: the real Runtime Interface Emulator plus an API-Gateway-like gateway.

    python -m server.local [--lambda-port 9000] [--gateway-port 8000] [--timeout 29]

The emulator runs `python -m awslambdaric server.handler.handler` exactly as the container does,
and answers
    curl -XPOST "http://localhost:9000/2015-03-31/functions/function/invocations" \\
         -d '{"query": "two dogs", "input_type": "text"}'
The gateway turns `POST /search` into a REST (v1) proxy event, invokes the function and returns
its statusCode/headers/body, or 504 `{"message": "Endpoint request timed out"}` after 29 s, as
API Gateway does. `GET /health` is 200 once the function answers and is initialised.

The function is configured by this shell's variables of the README's table (MODEL_PATH,
INDEX_PATH, ENCODER, BACKEND, OPENSEARCH_* ...) and its AWS_* and HF_* ones; other variables of
the shell do not reach it (server/local/stack.py, BASE_VARIABLES).

The emulator's START/END/REPORT lines for each invocation are left out unless `--verbose`.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from typing import Any

from server.local.gateway import API_GATEWAY_TIMEOUT_S
from server.local.stack import CURL, LocalLambda, PortInUse, shell_configuration


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m server.local", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lambda-port", type=int, default=9000, help="emulator port (default 9000; 0 = any free port)")
    ap.add_argument("--gateway-port", type=int, default=8000, help="gateway port (default 8000; 0 = any free port)")
    ap.add_argument("--host", default="127.0.0.1", help="address both listen on (default 127.0.0.1)")
    ap.add_argument("--timeout", type=float, default=API_GATEWAY_TIMEOUT_S,
                    help="gateway timeout in seconds before a 504 (default 29, as API Gateway)")
    ap.add_argument("--rie", help="path to an aws-lambda-rie binary (default: the one in aws-sam-cli)")
    ap.add_argument("--verbose", action="store_true",
                    help="also print the emulator's START/END/REPORT lines for every invocation")
    args = ap.parse_args(argv)

    def stop_on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    # Explicit: a shell's background job starts with SIGINT ignored, and Ctrl-C must still stop us.
    signal.signal(signal.SIGINT, stop_on_term)
    signal.signal(signal.SIGTERM, stop_on_term)
    stack = LocalLambda(shell_configuration(os.environ), lambda_port=args.lambda_port, gateway_port=args.gateway_port,
                       timeout_s=args.timeout, host=args.host, rie=args.rie, quiet=not args.verbose)
    try:
        try:
            stack.start(wait=False)
        except PortInUse as exc:
            print(f"python -m server.local: {exc}", file=sys.stderr, flush=True)
            return 2
        print(f"Lambda emulator: {stack.invoke_url}\nGateway:         POST {stack.search_url}   GET {stack.health_url}",
              flush=True)
        status = stack.wait_ready()
        state = "ready" if status == 200 else "answering, but NOT ready (see the error above; GET /health says why)"
        print(f"function {state} after {time.monotonic() - stack.started_at:.1f} s. Try:\n  "
              + CURL.format(port=stack.lambda_port) + "\n(Ctrl-C stops)", flush=True)
        while stack.process.poll() is None:
            time.sleep(0.5)
        print(f"the emulator exited with code {stack.process.returncode}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        # A second Ctrl-C (or a supervisor's SIGTERM after its SIGINT) must not cut the cleanup short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
