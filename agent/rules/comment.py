"""Rule comments as written to the kernel: escaped so no input can change a rule's meaning.

A comment is the only free text in a rule, and its text comes from object names, which
a file can fill with anything. It is written inside double quotes to iptables-restore,
set directly through libiptc, and read back from iptables-save, which escapes some
characters and quotes only some comments. The kernel keeps at most 255 bytes.

So a comment is restricted to printable ASCII without the three characters any of those
tools treats specially (``"``, ``'`` and ``\\``): every other character, including
newlines and anything outside ASCII, becomes ``?``. Then it is cut to the byte budget.
One ASCII character is one byte, so the cut never splits a character, the text is valid
UTF-8 whatever the input was, and what iptables-save prints back is exactly what was
written.
"""

from __future__ import annotations

import re

# xt_comment keeps XT_MAX_COMMENT_LEN (256) bytes including the terminating NUL.
MAX_COMMENT_BYTES = 255
REPLACEMENT = "?"
_UNSAFE = frozenset("\"'\\")
_UNSAFE_RE = re.compile(r"[^ -~]|[\"'\\]")
_TABLE = {
    code: REPLACEMENT for code in range(0x80) if not 0x20 <= code <= 0x7E or chr(code) in _UNSAFE
}


def escape_comment(text: str, limit: int = MAX_COMMENT_BYTES) -> str:
    """``text`` in the safe subset (see the module), at most ``limit`` bytes."""
    if _UNSAFE_RE.search(text) is None:  # the usual case: nothing to replace
        return text[:limit]
    if not text.isascii():
        text = "".join(ch if ch.isascii() else REPLACEMENT for ch in text)
    return text.translate(_TABLE)[:limit]
