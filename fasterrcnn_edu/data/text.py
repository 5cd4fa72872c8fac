"""Text files and names of a data set: one reader for split files and `classes.txt`, one check for names.

Split files and class lists come from many tools and systems. What is accepted, repaired or refused:

* Encoding: UTF-8, with or without a byte-order mark (the BOM is stripped, not read as part of the
  first id); UTF-16 and UTF-32 with a BOM are decoded. Anything else that is not valid UTF-8 (Latin-1,
  UTF-16 without a BOM) is a `DataError` naming the file and line: guessing an encoding would turn
  "café" into "cafÃ©" silently.
* The file must be a regular file (or a link to one) of at most `MAX_TEXT_BYTES`: a folder, a FIFO
  (reading it would wait forever) or a device is refused.
* Names (image ids, class names): at most `MAX_NAME_BYTES` bytes of UTF-8, so that "<id>.xml"
  fits the 255-byte file-name limit of common file systems, and no invisible characters (control
  and format characters such as zero-width spaces or bidirectional overrides), which would make two
  different names print identically.
* Two names of one list that look identical (the same after Unicode NFKC normalisation and after
  mapping Cyrillic and Greek look-alikes of Latin letters) are refused: they are either the same
  name written twice or a trap.
"""
from __future__ import annotations

import codecs
import os
import stat
import unicodedata
from pathlib import Path

from fasterrcnn_edu.data.errors import DataError

MAX_NAME_BYTES = 255 - len(".xml")   # NAME_MAX minus the extension every id gets
MAX_TEXT_BYTES = 64 * 2**20          # a split file of ~5 million ids
# Longest byte-order marks first: the UTF-32-LE mark begins with the UTF-16-LE one.
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))
# Letters of other scripts drawn like Latin ones in common fonts (after NFKC).
_LOOKALIKES = str.maketrans(
    "аеорсухѕіјԁһԛԝАВЕКМНОРСТХУІЈЅ" "οΑΒΕΖΗΙΚΜΝΟΡΤΥΧνρ",
    "aeopcyxsijdhqwABEKMHOPCTXYIJS" "oABEZHIKMNOPTYXvp")


def is_regular_file(path: Path) -> bool:
    """True for a regular file or a link to one (not a folder, FIFO, socket or device)."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def read_text_lines(path: str | os.PathLike, what: str) -> list[str]:
    """The lines of a small text file (see the module docstring for encodings); DataError otherwise.

    `what` says what the file is for ("split file", "class list") in the messages.
    """
    path = Path(path)
    if not is_regular_file(path):
        kind = "a folder" if path.is_dir() else "a broken link" if path.is_symlink() else "not a regular file"
        raise DataError(path, f"{what} is {kind}; expected a text file")
    size = path.stat().st_size
    if size > MAX_TEXT_BYTES:
        raise DataError(path, f"{what} is {size / 2**20:.0f} MiB, more than the {MAX_TEXT_BYTES // 2**20} MiB "
                              "a list of names can sensibly be")
    data = path.read_bytes()
    encoding = next((name for bom, name in _BOMS if data.startswith(bom)), "utf-8")
    if encoding == "utf-8" and b"\x00" in data:
        raise DataError(path, f"{what} contains NUL bytes (UTF-16 without a byte-order mark?); save it as UTF-8")
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DataError(path, f"{what} is not UTF-8 text (byte 0x{data[e.start]:02x} cannot be decoded); "
                              "save it as UTF-8", f"line {line}") from None
    return text.lstrip("\ufeff").splitlines()


def check_name(name: str, what: str) -> str:
    """`name` if it is usable as an id or class name; ValueError says why not (the caller adds the file)."""
    size = len(name.encode("utf-8", "surrogatepass"))
    if size > MAX_NAME_BYTES:
        raise ValueError(f"{what} is {size} bytes long, more than {MAX_NAME_BYTES} "
                         f"(file names are limited to 255 bytes): {name[:40]!r}...")
    hidden = [ch for ch in name if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Zl", "Zp")]
    if hidden:
        raise ValueError(f"{what} {name!r} contains the invisible or control character "
                         f"U+{ord(hidden[0]):04X} ({unicodedata.name(hidden[0], 'unnamed')})")
    return name


def lookalike_key(name: str) -> str:
    """What `name` looks like: NFKC-normalised, Cyrillic and Greek look-alikes mapped to Latin letters."""
    return unicodedata.normalize("NFKC", name).translate(_LOOKALIKES)


def find_lookalikes(names) -> tuple[str, str] | None:
    """The first two different names of `names` that look identical (`lookalike_key`), or None."""
    seen: dict[str, str] = {}
    for name in names:
        key = lookalike_key(name)
        if key in seen and seen[key] != name:
            return seen[key], name
        seen.setdefault(key, name)
    return None


def describe_difference(a: str, b: str) -> str:
    """Which code points make two look-alike names differ, e.g. "U+0430 CYRILLIC SMALL LETTER A"."""
    extra = sorted(set(a) ^ set(b))
    return ", ".join(f"U+{ord(ch):04X} {unicodedata.name(ch, '')}".strip() for ch in extra[:3]) or "normalisation"
