"""The repository states its own contracts: every pointer to docs/protocols.md names a section that
exists there, and nothing points at files outside the repository."""

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTOCOLS = ROOT / "docs" / "protocols.md"
# "docs/protocols.md, *Latent shards*" / "(docs/protocols.md, Metrics)" / "protocols.md#sample-sets"
POINTER = re.compile(r"protocols\.md(?:,\s*\*?\"?(?P<section>[A-Z][A-Za-z ,]*?)[*\")]|#(?P<anchor>[a-z-]+))")


def tracked_text_files() -> list[Path]:
    names = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [ROOT / n for n in names.split() if n.endswith((".py", ".md", ".yaml", ".yml", ".sh", ".toml", ".txt"))
            and (ROOT / n).is_file()]


def headings() -> list[str]:
    return [line[3:].strip() for line in PROTOCOLS.read_text().splitlines() if line.startswith("## ")]


def anchor(heading: str) -> str:
    return re.sub(r"[^a-z0-9 -]", "", heading.lower()).replace(" ", "-")


def test_every_protocols_pointer_names_an_existing_section():
    titles = headings()
    assert titles, "docs/protocols.md has no sections"
    bad = []
    for path in tracked_text_files():
        text = re.sub(r"\s+", " ", path.read_text(errors="replace"))  # pointers may wrap lines
        for match in POINTER.finditer(text):
            section, ref = match.group("section"), match.group("anchor")
            if section and not any(t.startswith(section.strip()) for t in titles):
                bad.append(f"{path.relative_to(ROOT)}: section {section!r}")
            if ref and ref not in {anchor(t) for t in titles}:
                bad.append(f"{path.relative_to(ROOT)}: anchor #{ref}")
    assert not bad, f"pointers to missing docs/protocols.md sections: {bad}"


def test_nothing_refers_outside_the_repository():
    # spelled in pieces so that this file does not itself match the pattern it looks for
    outside = re.compile("shared" "/spec|" r"\.\./" "shared")
    hits = [str(p.relative_to(ROOT)) for p in tracked_text_files()
            if outside.search(p.read_text(errors="replace"))]
    assert not hits, f"files referring to documents outside the repository: {hits}"
