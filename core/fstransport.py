"""Celery's filesystem broker with atomic message files: the embedded mode's queue.

Kombu's filesystem transport writes each message file in place, while a consumer in another
process may already move and read it: a consumer that polls often can read an empty or partial
file, crash its consumer loop on the JSON error, or lose the message. Here a message is written
under a name consumers ignore, then renamed into place once complete (atomic in one folder).
"""

from __future__ import annotations

import os
import uuid
from time import monotonic

from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps


class Channel(filesystem.Channel):
    """The filesystem channel, with `_put` writing to a hidden file and renaming it."""

    def _put(self, queue, payload, **kwargs):
        name = f"{int(round(monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"  # kombu's format
        final = os.path.join(self.data_folder_out, name)
        partial = os.path.join(self.data_folder_out, f".{uuid.uuid4()}.partial")
        try:
            with open(partial, "wb") as out:
                out.write(str_to_bytes(dumps(payload)))
            os.replace(partial, final)
        except OSError as exc:
            raise filesystem.ChannelError(f"cannot add {final!r} to the queue folder") from exc


class Transport(filesystem.Transport):
    """The filesystem transport using the atomic channel."""

    Channel = Channel
