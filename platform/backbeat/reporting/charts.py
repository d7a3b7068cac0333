"""Bar charts of one numeric result across experiments, as inline SVG (no script, no library).

Scalar results compared across a handful of experiments read best as horizontal bars with
the value printed; drawing them takes a few lines, so no charting library is loaded (the site
must open from the file system with no network, and stay small).
"""

from __future__ import annotations

from html import escape

BAR_H, GAP, LABEL_W, BAR_W, PAD = 18, 6, 230, 320, 8


def _clip(text: str, n: int = 34) -> str:
    return text if len(text) <= n else "…" + text[-(n - 1):]


def bars(title: str, items: list[tuple[str, float]]) -> str:
    """A horizontal bar chart of ``(label, value)``; negative values extend left of the axis.

    >>> "<rect" in bars("acc", [("a", 0.5), ("b", 1.0)])
    True
    """
    if not items:
        return ""
    lo = min(0.0, *(v for _l, v in items))
    hi = max(0.0, *(v for _l, v in items))
    span = (hi - lo) or 1.0
    height = PAD * 2 + 16 + len(items) * (BAR_H + GAP)
    width = LABEL_W + BAR_W + 90
    zero = LABEL_W + (0 - lo) / span * BAR_W
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="Helvetica, Arial, sans-serif" role="img" '
           f'aria-label="{escape(title)}">',
           f'<text x="{PAD}" y="{PAD + 10}" font-size="12" font-weight="bold">{escape(title)}</text>']
    for i, (label, value) in enumerate(items):
        y = PAD + 16 + i * (BAR_H + GAP)
        x0 = zero if value >= 0 else zero - abs(value) / span * BAR_W
        w = max(abs(value) / span * BAR_W, 1.0)
        out.append(f'<text x="{LABEL_W - 6}" y="{y + 13}" font-size="11" text-anchor="end">'
                   f'<title>{escape(label)}</title>{escape(_clip(label))}</text>'
                   f'<rect x="{x0:.1f}" y="{y}" width="{w:.1f}" height="{BAR_H}" fill="#4c78a8"/>'
                   f'<text x="{max(x0 + w, zero) + 4:.1f}" y="{y + 13}" font-size="11">{value:.6g}</text>')
    out.append(f'<line x1="{zero:.1f}" y1="{PAD + 14}" x2="{zero:.1f}" y2="{height - PAD}" stroke="#333"/>')
    out.append("</svg>")
    return "\n".join(out)
