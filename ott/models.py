"""The API's shared vocabulary: id formats, the text every service accepts, bodies two services share.

Every service builds its own models from these, so an id valid in one service is valid in all:
a catalog title id is the same string in subscription, license and CAS, and a session id CAS
hands out is what license stores.

    TitleId = Annotated[str, Path(pattern=TITLE_ID_PATTERN, description="a catalog title id")]
    Name = Annotated[str, StringConstraints(max_length=200), AfterValidator(valid_text)]
"""

from __future__ import annotations

from pydantic import BaseModel, Field

# A catalog title id: lower-case letters, digits and dashes, 63 at most (it names files and URL paths).
TITLE_ID_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
# A player's own, stable name for its device: short, no spaces, safe in a log line or a URL.
DEVICE_ID_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"
# Ids the services mint with uuid4().hex: auth's user ids and CAS's stream session ids.
HEX_ID_PATTERN = r"^[0-9a-f]{32}$"
USER_ID_PATTERN = HEX_ID_PATTERN
SESSION_ID_PATTERN = HEX_ID_PATTERN


def valid_text(text: str) -> str:
    """``text`` itself if it encodes as UTF-8 (for ``AfterValidator``); ValueError otherwise.

    JSON may carry lone surrogates ("\\ud800"): they are valid Python str but cannot be stored or
    hashed as UTF-8, so they are refused as bad input (422) instead of failing deep in the database.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (no lone surrogates)") from None
    return text


class PlaybackRequest(BaseModel):
    """A title to play on a device: what a player asks license for, and license asks CAS for."""

    title_id: str = Field(pattern=TITLE_ID_PATTERN, description="the title to play", examples=["big-buck-bunny"])
    device_id: str = Field(pattern=DEVICE_ID_PATTERN, description="the player's stable device id",
                           examples=["laptop"])
