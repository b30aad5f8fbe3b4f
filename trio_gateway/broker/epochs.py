"""Epoch notices: telling the hub that a held key's history started over. Pure.

Owns, per key that a local client follows with recovery, the epoch this instance last saw
(from a history fetch, or on a delivered message), and the notice delivery that a change
becomes. The Redis broker feeds it (the memory broker never forgets a held key's log, and
its restart ends every connection); must not touch clients (the hub routes the notice to the
key's recovering subscribers, fanout/hub.py).

A key's epoch changes when its log is lost: Redis flushed or restarted. Every message
carries its keys' epochs in its envelope, so the first message of a new epoch, or a fetch
that found one, is where the change shows; the notice goes out just before that message.
A new epoch counts offsets from 0, so the notice's offset is 0: everything of the new epoch
is owed to the client, and messages this instance did not receive (it was cut off from Redis
meanwhile) show up as a gap behind the notice, which a client recovers by resuming from it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from ..fanout.publication import EPOCH, Delivery, Extra
from ..protocol.codec import encode
from ..protocol.frames import text_frame
from ..protocol.messages import EpochChanged

_NOTICE = Extra(control=EPOCH)


def notice(key: str, epoch: str) -> Delivery:
    """The delivery of `key`'s new epoch to its recovering subscribers."""
    frame = text_frame(encode(EpochChanged(key, epoch, 0)))
    return Delivery(frame, frame, (key,), (0,), None, _NOTICE)


class EpochWatch:
    """The epochs of the keys fetched here; `seen` and `learned` turn changes into notices."""

    def __init__(self) -> None:
        self._epochs: dict[str, str] = {}

    def learned(self, key: str, epoch: str) -> Delivery | None:
        """A fetch found `key` at `epoch`: start watching it; a notice if that is news."""
        previous = self._epochs.get(key)
        self._epochs[key] = epoch
        return notice(key, epoch) if previous is not None and previous != epoch else None

    def seen(self, keys: Sequence[str], epochs: Sequence[str]) -> Iterator[Delivery]:
        """A message arrived with `epochs` (aligned with `keys`): a notice per watched key
        whose epoch it changes."""
        for key, epoch in zip(keys, epochs, strict=True):
            previous = self._epochs.get(key)
            if previous is not None and previous != epoch:
                self._epochs[key] = epoch
                yield notice(key, epoch)

    def forget(self, key: str) -> None:
        """No local client needs `key` any more."""
        self._epochs.pop(key, None)
