"""What the repository cites is in the repository: no reference to files a user cannot
see, and the numbers the code carries agree with docs/reference.md, which names the
public source of each."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "docs" / "reference.md"
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".txt", ".cfg"}


def _repo_text_files():
    for path in ROOT.rglob("*"):
        parts = set(path.relative_to(ROOT).parts)
        if path.is_file() and path.suffix in TEXT_SUFFIXES and not parts & {".venv", ".git", "runs", "build"}:
            yield path


def test_no_file_cites_a_reference_outside_the_repository():
    unseen = "REFERENCE" + ".md"  # split so this file does not match itself
    offenders = [str(p.relative_to(ROOT)) for p in _repo_text_files() if unseen in p.read_text(errors="ignore")]
    assert not offenders, f"cite the public source or docs/reference.md instead: {offenders}"


def test_reference_names_its_public_sources():
    text = REFERENCE.read_text()
    for source in ("arXiv:1911.09070", "arXiv:1904.07392", "google/automl", "rwightman/efficientdet-pytorch"):
        assert source in text, source


def _table(heading: str) -> list[list[str]]:
    text = REFERENCE.read_text()
    section = text[text.index(heading):]
    rows = []
    for line in section.splitlines()[1:]:
        if line.startswith("## "):
            break
        if line.startswith("|") and not set(line) <= set("|-: "):
            rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows[1:]  # without the header


def test_official_counts_in_code_equal_docs():
    from efficientdet_graph.profile.official import OFFICIAL

    rows = {r[0].split()[0]: r for r in _table("## Parameters and FLOPs")}
    for name, (params, flops, exact) in OFFICIAL.items():
        r = rows["D" + name.removeprefix("efficientdet-d")]
        if exact:
            assert (int(r[1].replace(",", "")), int(r[2].replace(",", ""))) == (params, flops), name
        else:
            assert r[1] == "≈77.0M" and r[2] == "≈410B" and (params, flops) == (77_000_000, 410_000_000_000)


@pytest.mark.parametrize("phi", [0, 1, 2, 3, 4, 5, 6, 7, "7x"])
def test_scaler_equals_table_1_in_docs(phi):
    from efficientdet_graph.scale import scale

    rows = {r[0]: r for r in _table("## Compound scaling")}
    r = rows[f"D{phi}"]
    row = scale(phi)
    backbone = int(re.search(r"B(\d)", r[2]).group(1))
    assert (row.image_size, row.backbone, row.fpn_channels, row.fpn_repeat, row.head_repeat) == (
        int(r[1]), f"efficientnet_b{backbone}", int(r[3]), int(r[4]), int(r[5]))
    assert row.fusion == {"fast-normalized": "fast_normalized", "sum": "sum"}[r[6]]
    assert row.anchor_scale == (5.0 if "anchor scale 5.0" in r[7] else 4.0)
    assert row.levels == ((3, 8) if "P3–P8" in r[7] else (3, 7))


def test_every_cited_results_file_is_in_the_repository():
    """A measurement cited by path (``search/results/...``, ``results/...``,
    ``benchmarks/results-...``) must be a committed file. A path a command is told to
    write (``--results PATH``, ``--out PATH``, ``-o PATH``) is an instruction, not a citation."""
    cited = re.compile(r"(--results\s+|--out\s+|-o\s+)?"
                       r"\b((?:search/)?results/[\w.-]+\.(?:json|png|md)|benchmarks/results-[\w.-]+\.json)")
    missing = sorted({f"{p.relative_to(ROOT)}: {m}" for p in _repo_text_files() if p.name != "test_docs.py"
                      for flag, m in cited.findall(p.read_text(errors="ignore"))
                      if not flag and not ((ROOT / m).exists() or (p.parent / m).exists())})  # or relative to the citing file
    assert not missing, missing
