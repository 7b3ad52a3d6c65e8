"""``with`` / ``async with`` support for objects that have ``close()`` / ``aclose()`` (the client
transports and verdict streams, the server handles): entering returns the object itself, leaving
closes it."""

from __future__ import annotations

from typing import TypeVar

__all__ = ["AsyncClosing", "Closing"]

_C = TypeVar("_C", bound="Closing")
_A = TypeVar("_A", bound="AsyncClosing")


class Closing:
    """``with`` closes the object on exit."""

    def close(self) -> None:
        """Release what the object holds."""
        raise NotImplementedError

    def __enter__(self: _C) -> _C:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class AsyncClosing:
    """``async with`` closes the object on exit."""

    async def aclose(self) -> None:
        """Release what the object holds."""
        raise NotImplementedError

    async def __aenter__(self: _A) -> _A:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()
