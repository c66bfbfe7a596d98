"""Dev tooling, never in the Lambda image (.dockerignore leaves it out): the local Lambda.

    python -m server.local            # the emulator on :9000 and the gateway on :8000 (__main__.py)
    with LocalLambda(env={...}) as stack: requests.post(stack.search_url, json={...})   # tests, benchmarks

stack.py starts and stops the emulator running the handler, front.py serves the emulator's
invocation URL, gateway.py is the API Gateway stand-in, invoker.py sends one invocation at a time.
"""

from server.local.stack import LocalLambda, PortInUse

__all__ = ["LocalLambda", "PortInUse"]
