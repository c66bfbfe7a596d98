"""The Lambda runtime (`python -m awslambdaric HANDLER`) with a URL policy that also admits 127.0.0.1.

The function fetches only public addresses (server/fetch.py) and there is no network here, so a
URL query end to end under the emulator needs an image served from this machine: this wrapper
widens the default policy by exactly the loopback address, in the runtime process only, and
changes nothing else. `LocalLambda(python=[sys.executable, LOOPBACK_RUNTIME])`.
"""

import ipaddress
import runpy
import sys

import server.fetch as fetch

LOOPBACK = ipaddress.ip_address("127.0.0.1")


def public_or_loopback(ip) -> bool:
    return ip == LOOPBACK or fetch.is_public_address(ip)


fetch.SafeFetcher.__init__.__kwdefaults__["is_allowed"] = public_or_loopback
if __name__ == "__main__":
    if sys.argv[1:2] != ["-m"]:
        raise SystemExit("usage: loopback_runtime.py -m awslambdaric HANDLER")
    sys.argv = sys.argv[2:]  # awslambdaric sees its own command line
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
