"""Self-contained HTML reports: text, tables and figures (PNG embedded, also saved beside)."""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from incerta.utils.files import atomic_write, atomic_write_text

STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:4px 8px;text-align:right}
th{background:#eee}td:first-child{text-align:left}img{max-width:100%}.note{color:#555}"""


@dataclass
class Report:
    """Build an HTML report section by section; ``write`` saves report.html and figures/."""

    title: str
    folder: Path
    parts: list[str] = field(default_factory=list)

    def heading(self, text: str) -> None:
        self.parts.append(f"<h2>{html.escape(text)}</h2>")

    def text(self, text: str) -> None:
        self.parts.append(f"<p class='note'>{html.escape(text)}</p>")

    def table(self, header: list[str], rows: list[list[object]]) -> None:
        fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else html.escape(str(v))
        head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{fmt(v)}</td>" for v in row) + "</tr>" for row in rows)
        self.parts.append(f"<table><tr>{head}</tr>{body}</table>")

    def figure(self, fig: Figure, name: str, caption: str = "") -> Path:
        """Embed ``fig`` and save it as figures/<name>.png; returns the PNG path.

        Names are unique within a report, so no figure file overwrites another."""
        if f"alt='{html.escape(name)}'" in "".join(self.parts):
            raise ValueError(f"figure name {name!r} is already used in this report")
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=110)
        plt.close(fig)
        data = buffer.getvalue()
        path = atomic_write(self.folder / "figures" / f"{name}.png", lambda tmp: tmp.write_bytes(data))
        encoded = base64.b64encode(data).decode()
        self.parts.append(
            f"<figure><img alt='{html.escape(name)}' src='data:image/png;base64,{encoded}'>"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
        return path

    def write(self) -> Path:
        page = (
            f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(self.title)}</h1>{''.join(self.parts)}</body></html>"
        )
        return atomic_write_text(self.folder / "report.html", page)
