"""The encode stage: each normalized event becomes its Avro body once, on its own.

Encoding happens here, before any sink or the spool sees an event, for two reasons: a record
that does not fit the schema fails alone (as bad input) instead of half-way through a buffer
other events share, and the body is computed once whatever happens next (sent, spooled,
replayed). How a sink frames the body on the wire is its :class:`WireEncoder`, chosen here too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bridge.codec import AvroCodec, SingleObjectEncoder, WireEncoder
from bridge.errors import UnencodableEvent
from bridge.event import EncodedEvent, LoginEvent

if TYPE_CHECKING:
    from bridge.settings import Settings

# What fastavro raises for a value that does not fit its field (a long out of range, a string
# where an int belongs): bad input, never a reason to fail anything but this one event.
_UNENCODABLE = (ValueError, TypeError, KeyError, AttributeError, OverflowError)


class Encoder:
    """Encodes events with one schema; build it once and share it."""

    def __init__(self, codec: AvroCodec) -> None:
        self.codec = codec

    def encode(self, event: LoginEvent) -> EncodedEvent:
        """Raises UnencodableEvent (a 400 at the edge) for a record the schema cannot hold."""
        try:
            datum = self.codec.encode_datum(event.record)
        except _UNENCODABLE as exc:
            # fastavro's messages name the value, never a secret: the record is allow-listed.
            raise UnencodableEvent(f"the event cannot be encoded: {exc}"[:300]) from exc
        return EncodedEvent(event=event, datum=datum)


def build_wire_encoder(settings: Settings, codec: AvroCodec) -> WireEncoder:
    """The broker sinks' framing: the registry's wire format when one is set, else single-object."""
    if settings.schema_registry_url:
        from bridge.registry import ConfluentRegistryEncoder

        return ConfluentRegistryEncoder.from_settings(settings, codec=codec)
    return SingleObjectEncoder(codec)
