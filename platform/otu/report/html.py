"""A static, single-file HTML page: headings, paragraphs, tables and PNG figures inlined as base64,
so the page opens anywhere (mail it, attach it to an MLflow run) with no folder beside it."""

from __future__ import annotations

import base64
import html
from pathlib import Path

import pandas as pd

from otu.cache import replace_file

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; font-size: 13px; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f3f3f3; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.5em 0; }
figure { margin: 0 0 1.5em; } figcaption { font-size: 12px; color: #666; }
"""


class Page:
    """Build the page part by part, then :meth:`write` it."""

    def __init__(self, title: str):
        self.title = title
        self.parts: list[str] = [f"<h1>{html.escape(title)}</h1>"]

    def heading(self, text: str, level: int = 2) -> Page:
        self.parts.append(f"<h{level}>{html.escape(text)}</h{level}>")
        return self

    def paragraph(self, text: str) -> Page:
        self.parts.append(f"<p>{html.escape(text)}</p>")
        return self

    def table(self, df: pd.DataFrame) -> Page:
        if df.empty:
            return self.paragraph("(none)")
        self.parts.append(df.to_html(index=False, escape=True, float_format=lambda v: f"{v:.4g}", border=0))
        return self

    def image(self, path: Path, caption: str = "") -> Page:
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
        self.parts.append(
            f'<figure><img alt="{html.escape(path.name)}" src="data:image/png;base64,{data}">{cap}</figure>'
        )
        return self

    def write(self, path: Path) -> Path:
        text = (
            f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(self.title)}</title>'
            f"<style>{STYLE}</style></head><body>\n" + "\n".join(self.parts) + "\n</body></html>\n"
        )
        replace_file(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
        return path
