"""OIDC benchmark: the per-request cost of single sign-on at the gateway, in-process, against the test provider.

Starts the test OIDC provider (tests/support/oidc_issuer.py) on 127.0.0.1, mints RS256 and ES256 access
tokens and measures, per token kind, the median time of: ``looks_like_mine`` (run on every bearer token,
our own JWTs included, to route it), a first ``verify`` (signature and claims checked: each call gets a
token not seen before) and a repeated ``verify`` (answered from the verified-token cache). Medians of
``--repeats`` rounds of ``--n`` calls each. Target: looks_like_mine and a repeated verify well under the
gateway's auth budget (p50 0.1 ms); a first verify is dominated by the signature check.

    .venv/bin/python benchmarks/bench_oidc.py [--n 1000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from comps.core.http import HttpClient
from comps.identity.oidc import OIDCConfig, OIDCVerifier
from tests.support.oidc_issuer import TestIssuer

TARGET_US = 100.0


async def run(issuer: TestIssuer, n: int, repeats: int) -> None:
    http = HttpClient()
    await http.start()
    try:
        verifier = OIDCVerifier(OIDCConfig(issuer=issuer.url, audience=issuer.api_audience), http)
        await verifier.warm_up()
        print(f"{'token':6} {'looks_like_mine us':>19} {'first verify us':>16} {'repeated verify us':>19}")
        for key in issuer.keys:
            tokens = [[issuer.mint({"jti": f"{r}-{i}"}, key=key) for i in range(n)] for r in range(repeats)]
            route, first, again = [], [], []
            for batch in tokens:
                start = time.perf_counter()
                for token in batch:
                    verifier.looks_like_mine(token)
                route.append((time.perf_counter() - start) / n * 1e6)
                start = time.perf_counter()
                for token in batch:
                    await verifier.verify(token)
                first.append((time.perf_counter() - start) / n * 1e6)
                start = time.perf_counter()
                for token in batch:
                    await verifier.verify(token)
                again.append((time.perf_counter() - start) / n * 1e6)
            med = statistics.median
            print(f"{key.alg:6} {med(route):19.1f} {med(first):16.1f} {med(again):19.1f}")
        print(f"target: looks_like_mine and a repeated verify < {TARGET_US:g} us")
    finally:
        await http.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="calls per round (at most 4096: the cache size)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with TestIssuer() as issuer:
        asyncio.run(run(issuer, min(args.n, 4096), args.repeats))


if __name__ == "__main__":
    main()
