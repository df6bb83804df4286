"""Writing the report: sections of text, tables and figures -> report.md (GitHub Markdown) and index.html.

index.html is one self-contained file: figures are inline base64 PNG, the style is inline, there is no script,
and a Content-Security-Policy forbids every fetch, so it opens from disk with no network. Every value is
escaped: the HTML template autoescapes (Jinja2), Markdown cells escape pipes, angle brackets and newlines.
"""

from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

__all__ = [
    "Image",
    "Section",
    "Table",
    "Text",
    "cell",
    "check_folder",
    "md_escape",
    "png",
    "table",
    "write_html",
    "write_markdown",
]

TEMPLATES = Path(__file__).parent / "templates"


@dataclass(frozen=True)
class Text:
    """A paragraph (plain text, escaped when written); `warn` renders it as a callout."""

    text: str
    warn: bool = False
    kind: ClassVar[str] = "text"


@dataclass(frozen=True)
class Table:
    """A table of already formatted cells."""

    header: list[str]
    rows: list[list[str]]
    caption: str = ""
    fold: str = ""  # when set, the HTML shows the table collapsed under this summary
    kind: ClassVar[str] = "table"


@dataclass(frozen=True)
class Image:
    """A figure as PNG bytes; `name` is its file name beside report.md."""

    name: str
    alt: str
    data: bytes
    kind: ClassVar[str] = "image"

    @property
    def base64(self) -> str:
        """The PNG as base64 text for a data: URI."""
        return base64.b64encode(self.data).decode("ascii")


@dataclass
class Section:
    """A titled part of the report."""

    id: str
    title: str
    items: list[Text | Table | Image] = field(default_factory=list)


def cell(value: Any, spec: str = "") -> str:
    """One table cell: missing values as "—", numbers by `spec` (e.g. ".3g", ",.0f"), the rest as str."""
    if value is None:
        return "—"
    try:
        if value != value or value is getattr(value, "NA", None):  # NaN, pd.NA
            return "—"
    except (TypeError, ValueError):  # pd.NA refuses comparison
        return "—"
    if type(value).__name__ in ("bool", "bool_"):  # Python or numpy bool
        return "yes" if value else "no"
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if spec and isinstance(value, int | float):
        return format(value, spec)
    if hasattr(value, "item") and spec:  # numpy / pandas scalars
        return format(value.item(), spec)
    return str(value)


def table(frame: pd.DataFrame, formats: dict[str, str] | None = None, caption: str = "", fold: str = "") -> Table:
    """A Table from a DataFrame: every column, cells formatted by `formats` (column -> format spec)."""
    formats = formats or {}
    rows = [
        [cell(value, formats.get(column, "")) for column, value in zip(frame.columns, record, strict=True)]
        for record in frame.itertuples(index=False, name=None)
    ]
    return Table([str(c) for c in frame.columns], rows, caption, fold)


def png(figure: Figure, name: str, alt: str, dpi: int = 96) -> Image:
    """Encode a Figure as PNG (and close it)."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(figure)
    return Image(name, alt, buffer.getvalue())


def md_escape(text: str) -> str:
    """Text safe inside a GitHub Markdown table cell or paragraph: no table breaks, no raw HTML, no links or
    emphasis; shown as written."""
    text = text.replace("\\", "\\\\").replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    for char in "|`*_[]":  # table cells, code, emphasis, links
        text = text.replace(char, "\\" + char)
    return " ".join(text.split())


def _md_table(item: Table) -> list[str]:
    """Lines of a pipe table (a header, its rule, the rows) and the caption."""
    lines = ["| " + " | ".join(md_escape(h) for h in item.header) + " |"]
    lines.append("|" + "|".join(" --- " for _ in item.header) + "|")
    lines += ["| " + " | ".join(md_escape(c) or " " for c in row) + " |" for row in item.rows]
    if item.caption:
        lines += ["", f"*{md_escape(item.caption)}*"]
    return lines


def _slug(title: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    kept = "".join(c for c in title.lower() if c.isalnum() or c in " -_")
    return kept.replace(" ", "-")


def check_folder(path: str | Path) -> Path:
    """`path` as an output folder that can be written, without creating it: an existing writable folder, or a
    new one whose nearest existing ancestor is a writable folder.

    Raises:
        ValueError: `path` (or an ancestor) is a file, or the folder that would hold it is not writable.
    """
    import os

    path = Path(path)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        what = "is a file" if existing == path else f"lies under {existing}, which is a file"
        raise ValueError(f"{path}: {what}; expected a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "" if existing == path else f" ({existing}, where it would be created)"
        raise ValueError(f"{path}: the folder{where} is not writable")
    return path


def write_markdown(path: Path, title: str, flags: list[Text], sections: list[Section]) -> Path:
    """Write report.md (figures as PNG files in `figures/` beside it) and return its path."""
    lines = [f"# {md_escape(title)}", ""]
    for flag in flags:
        lines += [f"> **{md_escape(flag.text)}**" if flag.warn else md_escape(flag.text), ""]
    lines += ["Contents: " + " · ".join(f"[{md_escape(s.title)}](#{_slug(s.title)})" for s in sections), ""]
    figures = path.parent / "figures"
    for section in sections:
        lines += [f"## {md_escape(section.title)}", ""]
        for item in section.items:
            if isinstance(item, Text):
                lines += [f"> {md_escape(item.text)}" if item.warn else md_escape(item.text), ""]
            elif isinstance(item, Table):
                lines += [*_md_table(item), ""]
            else:
                figures.mkdir(parents=True, exist_ok=True)
                (figures / item.name).write_bytes(item.data)
                lines += [f"![{md_escape(item.alt)}](figures/{item.name})", ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def write_html(path: Path, title: str, flags: list[Text], sections: list[Section]) -> Path:
    """Write the self-contained index.html from templates/report.html.j2 and return its path."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,  # every value from a results file is data, never markup
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    html = env.get_template("report.html.j2").render(title=title, flags=flags, sections=sections)
    path.write_text(html, encoding="utf-8")
    return path
