"""Serve the ``hpe`` flow as deployment ``full`` (``prefect deployment run hpe/full``).

Runs until interrupted; the Makefile starts it in the background next to a local Prefect
server bound to 127.0.0.1.
"""

from __future__ import annotations

from flows.hpe import hpe


def main() -> None:
    hpe.serve(name="full", description="Every stage of the pipeline on params.yaml")


if __name__ == "__main__":
    main()
