"""Text made safe for a terminal: what came from a model, an index or a file name cannot drive it.

Index descriptions and tags, ONNX node names, TensorFlow op names and file names are data that
somebody else wrote. Printed raw, an ANSI/OSC escape sets the window title or recolours the
screen, BEL rings, a carriage return overwrites the line, and bidi overrides (U+202E) make
``txt.exe`` read as ``exe.txt``. `safe_text` shows each such character as an escape instead
(``\\x1b``, ``\\u202e``), so nothing is lost from view and nothing is interpreted. Bytes of a file
name that is not valid UTF-8 (decoded by Python as lone surrogates) are shown as ``\\xNN`` too.
"""
from __future__ import annotations

import re

# C0 controls but tab and newline, DEL, C1 controls (CSI 0x9b, OSC 0x9d...), the bidi embedding,
# override and isolate marks, LRM/RLM/ALM, line and paragraph separators, lone surrogates.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069"
                     "\ud800-\udfff]")
_UNSAFE_LINE = re.compile("[\t\n]|" + _UNSAFE.pattern)


def _shown(match: re.Match) -> str:
    char = match.group()
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x100:
        return {"\t": "\\t", "\n": "\\n", "\r": "\\r"}.get(char, f"\\x{code:02x}")
    return f"\\u{code:04x}"


def safe_text(text: object, multiline: bool = True) -> str:
    """`text` with every terminal control shown as an escape; `multiline` keeps newlines and tabs."""
    value = text if isinstance(text, str) else str(text)
    return (_UNSAFE if multiline else _UNSAFE_LINE).sub(_shown, value)


def safe_line(text: object) -> str:
    """One line: `safe_text` with newlines and tabs escaped too (table cells, error messages)."""
    return safe_text(text, multiline=False)


__all__ = ["safe_line", "safe_text"]
