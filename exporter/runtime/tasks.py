"""Stopping background tasks."""

from __future__ import annotations

import asyncio


async def cancel_and_wait(*tasks: asyncio.Future | None) -> None:
    """Cancel `tasks` (None entries are skipped) and wait until every one has ended.

    How each ends (its result, an error, the cancellation) is dropped: a task being stopped
    has nothing left to report, and the next task must be stopped all the same. A cancellation
    of the caller itself still reaches the caller.
    """
    pending = [task for task in tasks if task is not None]
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)
