"""How a slide's path is written down and shown: a URL without what would give its access away.

A presigned URL (`https://bucket.s3.amazonaws.com/x.svs?X-Amz-Credential=...&X-Amz-Signature=
...`, a SAS URL's `?sig=`) carries in its query what lets anyone holding it read the slide.
summary.json, cohort.csv, the report page, failure lines, logs and Prefect's artifacts are
shared in a lab: they name a remote slide by `shown_slide_path`, its query and fragment
replaced by a marker (and a password, which a run refuses anyway, by `***`). The slide is
read by the URL as given; only what is written down and shown changes. A local path is shown
as it is.

Messages made elsewhere (a library's error quoting the URL it requested) are shown through
`shown_text`, which shows every remote URL in a text so. Kept free of other imports of ours:
the retry loop logs through it, and `wsi.slide_path` builds on it.
"""

from __future__ import annotations

import re

QUERY_REMOVED = "<query removed>"
FRAGMENT_REMOVED = "<fragment removed>"
PASSWORD_SHOWN = "***"

# A URL in free text: a scheme, '://', then up to a space, a quote, a backquote or '<' (a
# presigned URL has none of them unescaped: its signature is computed over the escaped
# text). Trailing punctuation is the sentence's (`URL: not a readable slide`), not the URL's.
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"`<>]+")
_SENTENCE_PUNCTUATION = ".,;:!?)]}"


def is_remote_url(slide_path: str) -> bool:
    """A slide on a store fsspec reads (s3://, https://, ...); a `file://` path is local."""
    return "://" in slide_path and not slide_path.startswith("file://")


def split_url(url: str) -> tuple[str, str | None, str | None]:
    """(what comes before the query, the query, the fragment): None where the URL has none.
    As RFC 3986 reads a URL: the fragment starts at the first '#', the query at the first
    '?' before it."""
    rest, hash_mark, fragment = url.partition("#")
    base, question_mark, query = rest.partition("?")
    return base, (query if question_mark else None), (fragment if hash_mark else None)


def _authority(base: str) -> tuple[str, str | None, str]:
    """(scheme and '://', the userinfo before the host or None, the host and path) of a
    URL's part before its query."""
    scheme, _, after = base.partition("://")
    authority = after.partition("/")[0]
    userinfo, at, _ = authority.rpartition("@")
    if not at:
        return f"{scheme}://", None, after
    return f"{scheme}://", userinfo, after[len(userinfo) + 1 :]


def url_password(url: str) -> str | None:
    """The password a URL carries before its host (`user:secret@host`); None when none ('' for
    `user:@host`)."""
    userinfo = _authority(split_url(url)[0])[1]
    if userinfo is None or ":" not in userinfo:
        return None
    return userinfo.partition(":")[2]


def shown_slide_path(slide_path: str) -> str:
    """`slide_path` as it is recorded and shown: for a remote URL, a query and a fragment
    replaced by `?<query removed>` and `#<fragment removed>`, a password by `***`; a local
    path (a `file://` one too) as it is. Its name is the URL's (`naming.name_path` reads the
    URL's path alone), and shown again it stays as it is."""
    if not is_remote_url(slide_path):
        return slide_path
    base, query, fragment = split_url(slide_path)
    scheme, userinfo, host_and_path = _authority(base)
    if userinfo is not None and ":" in userinfo:
        base = f"{scheme}{userinfo.partition(':')[0]}:{PASSWORD_SHOWN}@{host_and_path}"
    if query is not None:  # an empty query hides nothing: kept, so showing twice changes nothing
        base += f"?{QUERY_REMOVED}" if query else "?"
    if fragment is not None:
        base += f"#{FRAGMENT_REMOVED}" if fragment else "#"
    return base


def shown_text(text: str) -> str:
    """`text` with every remote URL in it shown as `shown_slide_path` shows it: for messages
    that quote a URL (ours, and a library's, e.g. aiohttp's `url='...'`)."""

    def shown(match: re.Match[str]) -> str:
        url = match.group(0)
        core = url.rstrip(_SENTENCE_PUNCTUATION)
        return shown_slide_path(core) + url[len(core) :]

    return _URL_IN_TEXT.sub(shown, text)


def not_utf8(path: str) -> bool:
    """True for a path that is not UTF-8: Python holds its undecodable bytes as lone
    surrogates (PEP 383), which no UTF-8 file (summary.json, cohort.csv) can carry."""
    return any("\udc80" <= ch <= "\udcff" for ch in path)


def utf8_shown(path: str) -> str:
    """`path` printable: each undecodable byte (`not_utf8`) written as its escape, `\\xe9`."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
