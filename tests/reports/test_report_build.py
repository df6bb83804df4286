"""build and the CLI: both files, self-contained HTML, flags at the top, escaping, GitHub-ready Markdown."""

from __future__ import annotations

import base64
import json
import os
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from reports.__main__ import main
from tests.reports.files import AUDIT, CPU, EVIL, RUN_A

SECTIONS = (
    "environment",
    "headline",
    "comparison",
    "latency",
    "crossover",
    "roofline",
    "lora",
    "memory",
    "finetune",
    "quantization",
    "telemetry",
    "timing",
    "audit",
    "papers",
    "missing",
)


class Page(HTMLParser):
    """What a browser would see: tags with their attributes, section ids, and the text."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def all(self, tag: str) -> list[dict[str, str | None]]:
        return [attrs for name, attrs in self.tags if name == tag]


def _table_rows(markdown: str) -> list[list[str]]:
    """Each pipe table as its lines split on unescaped pipes."""
    tables, current = [], []
    for line in [*markdown.splitlines(), ""]:
        if line.startswith("|"):
            current.append(re.split(r"(?<!\\)\|", line)[1:-1])
        elif current:
            tables.append(current)
            current = []
    return tables


def test_writes_both_files(compared):
    markdown, html = compared
    assert markdown.name == "report.md" and html.name == "index.html"
    assert markdown.parent == html.parent
    page = Page(html.read_text())
    assert {a["id"] for a in page.all("section")} == set(SECTIONS)


def test_html_is_self_contained(compared):
    _, html = compared
    text = html.read_text()
    page = Page(text)
    images = page.all("img")
    assert len(images) == 9  # latency, speedup, crossover, roofline, LoRA x2, memory, quantization, telemetry
    for image in images:
        src = image["src"] or ""
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
        assert image["alt"]
    assert not page.all("script") and not page.all("link")
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", text)
    csp = [m for m in page.all("meta") if m.get("http-equiv") == "Content-Security-Policy"]
    assert csp and "default-src 'none'" in (csp[0]["content"] or "")


def test_regressions_and_gaps_flagged_at_the_top(compared):
    markdown, html = compared
    md = markdown.read_text()
    first_section = md.index("\n## ")
    assert 0 <= md.index("REGRESSIONS: 17 against baseline run h100\\_a (threshold 5%)") < first_section
    assert 0 <= md.index("PARTIAL REPORT") < first_section
    audit = "Kernel audit: of 11 compiled configs, 1 failed to compile; 1 spill registers; 1 exceed shared memory"
    assert 0 <= md.index(audit) < first_section
    page = html.read_text()
    assert 0 <= page.index("REGRESSIONS: 17") < page.index("<section")
    assert 0 <= page.index("PARTIAL REPORT") < page.index("<section")
    assert "no cases in group &#39;optim&#39;" in page and "no cases in group 'optim'" in md


def test_markdown_tables_render_on_github(compared):
    markdown, _ = compared
    md = markdown.read_text()
    tables = _table_rows(md)
    assert len(tables) >= 10
    for rows in tables:
        assert all(len(row) == len(rows[0]) for row in rows), rows[0]
        assert all(cell.strip() == "---" for cell in rows[1])
    for name in re.findall(r"!\[[^\]]*\]\((figures/[^)]+)\)", md):
        assert (markdown.parent / name).stat().st_size > 1000


def test_values_are_escaped(evil_report):
    markdown, html = evil_report
    page = html.read_text()
    assert "<script>" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in page
    assert EVIL in "".join(Page(page).text)  # shown as text, exactly
    md = markdown.read_text()
    assert "<script>" not in md and "<img src=x" not in md
    for rows in _table_rows(md):
        assert all(len(row) == len(rows[0]) for row in rows)
    assert "\\| \\`pipe\\` \\*\\*bold\\*\\*" in md


def test_gpu_less_run_gets_predictions(cpu_report):
    markdown, html = cpu_report
    md = markdown.read_text()
    assert "| A100 SXM4 80GB µs | A100 SXM4 80GB bound | H100 SXM5 80GB µs | H100 SXM5 80GB bound | measured |" in md
    assert "not measured" in md and "datasheet peaks" in md
    assert "not measured" in html.read_text()
    assert "No NVML telemetry" in md and "No timed LoRA cases" in md
    assert "no cases in group 'lora'" in md and "Triton kernels are not timed" in md


def test_single_gpu_run_has_no_comparison_or_predictions(tmp_path: Path):
    from reports import build

    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "stale.png").write_bytes(b"old")
    markdown, _ = build(str(RUN_A), tmp_path, audit=AUDIT)  # one path, bare
    assert not (tmp_path / "figures" / "stale.png").exists()
    md = markdown.read_text()
    assert "REGRESSIONS" not in md and "## Comparison" not in md
    assert "not measured" not in md
    assert "1 kernel configs spill registers" in md and "1 kernel configs failed to compile" in md
    assert "1 kernel configs need more shared memory than one block may have" in md


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert main([str(CPU), "--out", str(tmp_path / "out")]) == 0
    assert "index.html" in capsys.readouterr().out
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert main([str(CPU), str(bad), "--out", str(tmp_path / "out2")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "bad.json: not valid JSON" in err
    assert not (tmp_path / "out2").exists()


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-1", "-0.5", "five", ""])
def test_cli_refuses_a_bad_threshold_in_one_line(value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as exit_:
        main([str(CPU), f"--threshold={value}", "--out", str(tmp_path / "out")])  # = : argparse reads -inf as a flag
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1
    assert err == (
        f"python -m reports: error: argument --threshold: {value!r}; expected a finite fraction >= 0 (0.05 is 5%) "
        "(--help for usage)\n"
    )
    assert not (tmp_path / "out").exists()


def test_build_refuses_a_non_finite_threshold(tmp_path: Path):
    from reports import build

    for value in (float("nan"), float("inf"), -0.01):
        with pytest.raises(ValueError, match=r"threshold: .*; expected a finite fraction >= 0"):
            build([CPU], tmp_path, threshold=value)


def test_cli_refuses_an_out_it_cannot_write_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    afile = tmp_path / "report.md"
    afile.write_text("an earlier report")
    cases = [
        (afile, f"error: --out {afile}: is a file; expected a folder\n"),
        (afile / "sub", f"error: --out {afile / 'sub'}: lies under {afile}, which is a file; expected a folder\n"),
        (Path("/proc/qkbench-report"), "error: --out /proc/qkbench-report: cannot write the report ("),
    ]
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        cases.append((locked, f"error: --out {locked}: the folder is not writable\n"))
    for out, message in cases:
        assert main([str(CPU), "--out", str(out)]) == 2, out
        err = capsys.readouterr().err
        assert err.startswith(message) and err.count("\n") == 1, err
    assert afile.read_text() == "an earlier report"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "error: give results FILEs, --history DB, or both"),
        (["--audit", "nowhere.json"], "error: nowhere.json: no such file\n"),
        (["--audit", "."], "error: .: is a directory, expected a results JSON file\n"),
        (["--threshold"], "error: argument --threshold: expected one argument"),
        (["--colour"], "error: unrecognized arguments: --colour"),
    ],
)
def test_cli_other_bad_arguments_are_one_line(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    files = [str(CPU)] if args else []
    try:
        code = main([*files, "--out", str(tmp_path / "out"), *args])
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err, err


def test_failed_runs_give_a_partial_report_and_empty_ones_none(tmp_path: Path):
    from reports import ReportError, build

    empty = json.loads(CPU.read_text())
    empty["benchmarks"] = []
    del empty["machine_info"]["qkbench"]  # what once gave a report titled "qkbench report: None"
    failed = json.loads(CPU.read_text())
    for bench in failed["benchmarks"]:
        bench["extra_info"].update(status="error", time_s=None, error="RuntimeError: boom")
        bench["stats"] = None
    paths = [tmp_path / "empty.json", tmp_path / "failed.json"]
    for path, data in zip(paths, (empty, failed), strict=True):
        path.write_text(json.dumps(data))
    with pytest.raises(ReportError, match=r"empty\.json: the file holds no benchmark cases; nothing to report"):
        build(paths, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    markdown, html = build(paths[1:], tmp_path / "out")
    md = markdown.read_text()
    assert "PARTIAL REPORT (error: 13; missing group: 4)" in md  # optim, memory, lora and finetune have no case
    assert "No timed matmul cases" in md and "<img" not in html.read_text()


def test_unknown_device_is_named_so_in_the_title(tmp_path: Path):
    from reports import build

    data = json.loads(CPU.read_text())
    del data["machine_info"]["qkbench"]
    path = tmp_path / "bare.json"
    path.write_text(json.dumps(data))
    markdown, html = build([path], tmp_path / "out")
    assert markdown.read_text().startswith("# qkbench report: unknown device\n")
    assert "<title>qkbench report: unknown device</title>" in html.read_text()


def test_non_finite_measurements_are_listed_as_problems_not_shown(tmp_path: Path):
    from reports import build

    data = json.loads(CPU.read_text())
    quantize = [b for b in data["benchmarks"] if b["extra_info"]["group"] == "quantize"]
    quantize[0]["extra_info"].update(time_s=float("inf"), rmse=float("nan"))
    quantize[1]["extra_info"]["sqnr_db"] = float("inf")
    path = tmp_path / "odd.json"
    path.write_text(json.dumps(data))
    markdown, _ = build([path], tmp_path / "out")
    md = markdown.read_text()
    problems = md[md.index("## Missing and failed") :]
    first, second = (b["name"].replace("_", "\\_").replace("[", "\\[").replace("]", "\\]") for b in quantize[:2])
    assert f"odd: benchmark '{first}': non-finite time\\_s = inf, rmse = nan; not shown" in problems
    assert f"odd: benchmark '{second}': non-finite sqnr\\_db = inf; not shown" in problems
    assert "problem: 2" in md[: md.index("\n## ")]  # flagged at the top
    for rows in _table_rows(md[: md.index("## Missing and failed")]):
        cells = [c.strip().lower() for row in rows for c in row]
        assert not {"inf", "-inf", "nan"} & set(cells), rows[0]
    quant_rows = [r for r in _table_rows(md[md.index("## Quantization") :])[0][2:]]
    assert len(quant_rows) == 2  # the case with no RMSE leaves the figure and its table


def test_a_zero_time_gives_no_infinite_rates():
    from reports.derive import derive
    from reports.load import load

    cases = load([CPU]).cases
    cases.loc[0, ["time_s", "tflops", "gbps"]] = [0.0, None, None]
    out = derive(cases)
    numbers = out.select_dtypes("number")
    assert not numbers.isin([float("inf"), float("-inf")]).any().any()
    assert out.loc[0, ["tflops", "gbps", "speedup", "vs_reference"]].isna().all()


def test_md_escape():
    from reports.render import md_escape

    assert md_escape("a|b") == "a\\|b"
    assert md_escape("[x](https://e.invalid)") == "\\[x\\](https://e.invalid)"
    assert md_escape("&lt;b&gt; <i>") == "&amp;lt;b&amp;gt; &lt;i&gt;"
    assert md_escape("q_proj *x* `c` \\") == "q\\_proj \\*x\\* \\`c\\` \\\\"
    assert md_escape("two\nlines\r\n") == "two lines"
