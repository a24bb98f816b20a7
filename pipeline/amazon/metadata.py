"""Item sentences for the text features, from the metadata file, built as MMRec built them.

A sentence is the title, the brand, the first category path (each level followed by a space) and
the description, joined by spaces, with line breaks turned into spaces; a missing field counts as
one space. Both formats are read: 2014 (`categories`: a list of paths, `description`: a string)
and 2018 (`category`: one path, `description`: a list of paragraphs).
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from pipeline.amazon.records import open_lines, parse_record
from pipeline.dataset import DatasetError

log = logging.getLogger(__name__)

MISSING = " "  # what MMRec put in place of a missing field
_ASIN = re.compile(r"""["']asin["']\s*:\s*["']([^"']+)["']""")


def _text(value: Any) -> str:
    if value is None:
        return MISSING
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value) if value else MISSING
    text = str(value)
    return text if text else MISSING


def _category_path(record: Mapping[str, Any]) -> list[str]:
    categories = record.get("categories")
    if isinstance(categories, list) and categories:  # 2014: a list of category paths; MMRec takes the first
        first = categories[0]
        return [str(c) for c in first] if isinstance(first, list) else [str(c) for c in categories]
    category = record.get("category")  # 2018: one path
    return [str(c) for c in category] if isinstance(category, list) else []


def item_sentence(record: Mapping[str, Any]) -> str:
    """The text MMRec encoded for one metadata record."""
    sentence = _text(record.get("title")) + " " + _text(record.get("brand")) + " "
    sentence += "".join(c + " " for c in _category_path(record))
    sentence += _text(record.get("description"))
    return sentence.replace("\n", " ")


def item_sentences(path: Path, asins: Sequence[str]) -> list[str]:
    """One sentence per ASIN, in the order given; items without metadata get the all-missing sentence (logged)."""
    wanted = set(asins)
    found: dict[str, str] = {}
    for number, text in open_lines(path):
        if not text.strip():
            continue
        quick = _ASIN.search(text)  # skip the full parse of the category's other items
        if quick and quick.group(1) not in wanted:
            continue
        record = parse_record(path, number, text)
        asin = record.get("asin")
        if not isinstance(asin, str) or not asin:
            raise DatasetError(f"{path}: line {number}: metadata record without an 'asin'")
        if asin in wanted and asin not in found:
            found[asin] = item_sentence(record)
    if not found:
        example = ", ".join(list(asins)[:3])
        raise DatasetError(
            f"{path}: holds none of the {len(wanted)} items of the reviews (e.g. {example}): "
            f"is it the metadata file of another category?"
        )
    missing = [a for a in asins if a not in found]
    if missing:
        log.warning(
            "%s: %d of %d items have no metadata (e.g. %s); their sentence is empty",
            path, len(missing), len(wanted), ", ".join(missing[:3]),
        )
    empty = item_sentence({})
    return [found.get(a, empty) for a in asins]
